"""A pretrained base model and its tokenizer from a hub id or a local model directory.

Loading and quantisation (bitsandbytes, CUDA only) are transformers'; what is written here are the
safe defaults (safetensors only, `trust_remote_code` off unless the config says so) and the checks
that turn a broken model directory into an error naming what is missing (`model.directory`).
"""

from __future__ import annotations

import logging

from jsquad_lora.config.schema import ModelConfig
from jsquad_lora.errors import InputError
from jsquad_lora.model.directory import MODEL_DIR_FIX, TOKENIZER_FILES, _first_line, _holds, _local_model_dir

log = logging.getLogger(__name__)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of a hub id or a local model directory; a directory without tokenizer files, or
    whose tokenizer turns text into no tokens (transformers builds an empty one from config.json
    alone), is an InputError saying so. A directory whose tokenizer is a sentencepiece model (rinna's)
    is read through the sentencepiece library, which segments text as the model was trained
    (`sentencepiece_tokenizer.py`)."""
    from transformers import AutoTokenizer

    local = _local_model_dir(name)
    if local is not None and not any((local / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(
            name,
            f"no tokenizer files in this model directory (none of {', '.join(TOKENIZER_FILES)}; "
            f"it holds: {_holds(local)})",
            fix="save the tokenizer beside the model (tokenizer.save_pretrained(directory)), "
            "or copy its files from where the model came from",
        )
    if trust_remote_code:
        log.warning("trust_remote_code is on: code from %s will run on this machine", name)
    try:
        from jsquad_lora.model.sentencepiece_tokenizer import load_sentencepiece_tokenizer, sentencepiece_model_of

        model_file = sentencepiece_model_of(name, local)
        if model_file is not None:
            log.info("tokenizer: %s/%s through the sentencepiece library (as the model was trained)", name, model_file)
            tokenizer = load_sentencepiece_tokenizer(name, model_file)
        else:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise InputError(
            name,
            f"could not load the tokenizer ({_first_line(err)})",
            fix=MODEL_DIR_FIX
            if local is not None
            else "pass a local model directory, or a hub id on a machine with network access",
        ) from None
    try:
        empty = not tokenizer("abc 123", add_special_tokens=False)["input_ids"]
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        empty = True
    if empty:
        raise InputError(
            name,
            "the tokenizer has no vocabulary (it turns text into no tokens): its vocabulary files are missing",
            fix="save the tokenizer beside the model (tokenizer.save_pretrained(directory)), "
            "or copy its files (tokenizer.json, or the vocabulary files) from where the model came from",
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_base_model(cfg: ModelConfig):
    """A pretrained causal LM from a hub id or a local path, 8-/4-bit on CUDA when asked.
    Safetensors only unless `model.allow_pickle` (a pickle checkpoint can run code when loaded).
    A local directory that is empty or lacks config.json or weights is an InputError naming what is
    missing, as is a model transformers cannot read (no model_type, damaged weights)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    local = _local_model_dir(cfg.name)
    if local is not None and not (local / "config.json").is_file():
        raise InputError(
            cfg.name, f"no config.json in this model directory (it holds: {_holds(local)})", fix=MODEL_DIR_FIX
        )
    if local is not None and not any(
        p.suffix in (".safetensors", ".bin", ".pt", ".pth") or p.name.endswith(".index.json") for p in local.iterdir()
    ):
        raise InputError(
            cfg.name,
            f"no weights in this model directory (no *.safetensors file; it holds: {_holds(local)})",
            fix=MODEL_DIR_FIX,
        )

    kwargs: dict = {
        "dtype": _torch_dtype(cfg.dtype),
        "trust_remote_code": cfg.trust_remote_code,
        "use_safetensors": None if cfg.allow_pickle else True,
    }
    if cfg.allow_pickle:
        log.warning("model.allow_pickle is on: a pickle checkpoint of %s may run code when loaded", cfg.name)
    if cfg.trust_remote_code:
        log.warning("trust_remote_code is on: code from %s will run on this machine", cfg.name)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.load_in_8bit or cfg.load_in_4bit:
        if not torch.cuda.is_available():
            raise InputError(
                "model.load_in_8bit" if cfg.load_in_8bit else "model.load_in_4bit",
                "8-bit/4-bit loading needs a CUDA GPU (bitsandbytes)",
                fix="set it to false on this machine, or run on a GPU",
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=cfg.load_in_8bit,
            load_in_4bit=cfg.load_in_4bit,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_type="nf4",
        )
        kwargs["device_map"] = "auto"
    elif torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    try:
        return AutoModelForCausalLM.from_pretrained(cfg.name, **kwargs)
    except SafetensorError as err:
        raise InputError(
            cfg.name, f"the weights file is damaged or truncated ({_first_line(err)})", fix=MODEL_DIR_FIX
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "size mismatch" not in str(err):
            raise  # not a problem of the files (e.g. out of memory)
        first = _first_line(err)
        fix = (
            "only safetensors weights are loaded by default; convert the checkpoint, "
            "or set model.allow_pickle=true if you trust it"
            if "safetensors" in first.lower() and isinstance(err, OSError)
            else MODEL_DIR_FIX
            if local is not None
            else "pass a local model directory, or a hub id on a machine with network access"
        )
        raise InputError(cfg.name, f"could not load the model ({first})", fix=fix) from None
