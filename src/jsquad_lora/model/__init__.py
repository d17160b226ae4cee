"""Stage 4, the model: where a base model comes from (sources registry), loading, LoRA."""
