"""Base model and tokenizer (hub id, local path, or the offline tiny GPT-NeoX) and the LoRA adapter.

Loading, quantisation (bitsandbytes, CUDA only) and adapters are transformers + peft; what is
written here is the offline "tiny" model (a character tokenizer trained on the training split)
and the safe defaults: safetensors only, `trust_remote_code` off unless the config says so.
"""

from __future__ import annotations

import os
from pathlib import Path


def models_cache() -> Path:
    """Where converted model directories live: the tool's cache (`data.cache_dir`) / models."""
    return cache_dir() / "models"


def cache_dir() -> Path:
    """This tool's cache: $JSQUAD_LORA_CACHE, else $XDG_CACHE_HOME/jsquad-lora or ~/.cache/jsquad-lora."""
    root = os.environ.get("JSQUAD_LORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "jsquad-lora"
    )
    return Path(root)
