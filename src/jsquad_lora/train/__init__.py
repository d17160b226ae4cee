"""Stage 5, training: the Trainer with the tool's batch order, losses and exact resume."""
