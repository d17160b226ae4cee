"""The model source for `model.gguf_file`: any GGUF file, converted once into a cached model directory.

The file is named by its path (absolute, or relative to `model.name` when that is a directory); the
converted directory is named by the file's sha256, so the same file is converted once whatever its path.
"""

from __future__ import annotations

from pathlib import Path

from jsquad_lora.config.schema import ModelConfig
from jsquad_lora.errors import InputError
from jsquad_lora.model.gguf import converted, file_digest
from jsquad_lora.model.source import ModelSource, register_source
from jsquad_lora.model.sources.gemma import chat_template_for
from jsquad_lora.util.cache import models_cache


def gguf_path(cfg: ModelConfig) -> Path:
    """`model.gguf_file` as a path: absolute, or relative to `model.name` when that names a directory."""
    given = Path(cfg.gguf_file)
    # a name that is no directory (the default gemma-3-270m, tiny, a hub id) leaves the path as given
    return (
        given
        if given.is_absolute() or not Path(cfg.name).expanduser().is_dir()
        else Path(cfg.name).expanduser() / given
    )


def _resolve(cfg: ModelConfig) -> str:
    gguf = gguf_path(cfg)
    if not gguf.is_file():
        raise InputError(
            "model.gguf_file",
            f"GGUF file not found: {gguf}",
            fix="give the path of a .gguf file (absolute, or relative to model.name when that is a directory)",
        )
    return converted(gguf, models_cache() / f"gguf-{file_digest(gguf)[:16]}", chat_template_for(gguf))


register_source(
    ModelSource(
        "gguf-file",
        "a GGUF file (model.gguf_file), dequantised once into a cached safetensors model directory",
        claims=lambda cfg: bool(cfg.gguf_file),
        resolve=_resolve,
        describe=lambda cfg: (cfg.gguf_file, f"see the model card of {cfg.name}"),
        precedence=10,  # an explicit file wins over any model.name
    )
)
