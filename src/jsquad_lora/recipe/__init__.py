"""The recipe: the main job wiring the stages, and its run directory. Nothing imports it but the CLI."""
