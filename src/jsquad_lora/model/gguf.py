"""A GGUF file dequantised into a float32 safetensors model directory, once, in the tool's cache.

transformers reads GGUF (through the `gguf` package); what is written here is the conversion's
bookkeeping: the quantisation marker dropped so the weights save as plain safetensors, a chat template
added where the file carries none, the directory written atomically and reused by later runs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from jsquad_lora.errors import InputError

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted(gguf: Path, target: Path, chat_template: str | None = None) -> str:
    """`target`, a model directory converted from `gguf` unless an earlier run converted it already."""
    if not (target / "config.json").exists():
        log.info("converting %s to a safetensors model directory (once): %s", gguf, target)
        convert_gguf(gguf, target, chat_template)
    log.info("model directory: %s", target)
    return str(target)


def convert_gguf(gguf: Path, target: Path, chat_template: str | None = None) -> None:
    """Dequantise a GGUF file into a float32 safetensors model directory with its tokenizer (atomic);
    `chat_template` is given to a tokenizer that has none (a base model's GGUF carries none)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jsquad_lora.util.files import atomic_dir

    try:
        import gguf as _  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise InputError(gguf, "reading GGUF files needs the gguf package", fix="pip install gguf") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as err:
        raise InputError(
            gguf,
            f"transformers could not read this GGUF file ({str(err).splitlines()[0]})",
            fix="pass a GGUF of an architecture transformers supports (llama, gemma3, qwen2, ...)",
        ) from None
    # the weights are now plain floats: drop the GGUF quantisation marker so they save as safetensors
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer, model.is_quantized = None, False
    if chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
