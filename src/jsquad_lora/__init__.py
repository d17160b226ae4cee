"""jsquad-lora: LoRA fine-tuning and honest evaluation of Japanese causal LLMs on JGLUE JSQuAD."""

__version__ = "0.1.0"
