"""Where this tool caches what it downloads or converts: $JSQUAD_LORA_CACHE, else ~/.cache/jsquad-lora."""

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
