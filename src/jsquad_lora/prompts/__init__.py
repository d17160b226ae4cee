"""Stage 2, prompts: the text a model sees for a question (templates registry, few-shot examples)."""
