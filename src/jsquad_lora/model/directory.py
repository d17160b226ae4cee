"""Checks of a local model directory before transformers reads it: what is missing, named.

transformers takes a missing path for a hub id, and an empty or partial directory fails deep inside it
with a message about something else; these checks say which file is missing and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

from jsquad_lora.errors import InputError

#: a model directory's tokenizer is in at least one of these (as save_pretrained writes them)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
MODEL_DIR_FIX = (
    "a model directory holds config.json, the weights (model.safetensors) and the tokenizer files, as "
    "save_pretrained writes them: download or save the model into it again, or point model.name at another"
)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _holds(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def _local_model_dir(name: str) -> Path | None:
    """The directory `name` names when it is a local path (None for a hub id such as org/model).
    InputError when such a path is missing, is a file, or is an empty directory: transformers would
    take it for a hub id, or fail deep inside with a message about something else."""
    if not name.strip():
        raise InputError("model.name", "empty model name", fix="give a local model directory or a hub id (org/model)")
    path = Path(name).expanduser()
    if not (path.is_absolute() or name.startswith((".", "~")) or path.exists()):
        return None
    if not path.exists():
        raise InputError(
            name, "model directory not found", fix="check model.name: a local model directory or a hub id (org/model)"
        )
    if not path.is_dir():
        raise InputError(
            name,
            "not a model directory but a file",
            fix="pass the directory holding config.json and the weights (a .gguf file goes in model.gguf_file)",
        )
    if not any(path.iterdir()):
        raise InputError(name, "the model directory is empty", fix=MODEL_DIR_FIX)
    return path
