"""Stage 7, evaluation: a split answered (hf or vllm backend), predictions, scorers (registry)."""
