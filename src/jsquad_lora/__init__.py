"""jsquad-lora: LoRA fine-tuning and honest evaluation of Japanese causal LLMs on JGLUE JSQuAD."""

from __future__ import annotations

__version__ = "0.1.0"
