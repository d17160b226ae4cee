"""Base model and tokenizer (hub id, local path, or the offline tiny GPT-NeoX) and the LoRA adapter.

Loading, quantisation (bitsandbytes, CUDA only) and adapters are transformers + peft; what is
written here is the offline "tiny" model (a character tokenizer trained on the training split)
and the safe defaults: safetensors only, `trust_remote_code` off unless the config says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from .config import LoraSettings, ModelConfig
from .errors import InputError

log = logging.getLogger(__name__)

TINY = "tiny"
NL_TOKEN = "<NL>"
TINY_SPECIALS = ["<pad>", "<unk>", "<eos>"]


def build_char_tokenizer(texts: Iterable[str]):
    """A character-level tokenizer over `texts`: every character one token, `<NL>` one token,
    EOS `<eos>`, pad `<pad>`, unseen characters `<unk>`.

    Characters, not BPE: a model trained from scratch in minutes learns to copy a span of the
    passage far more easily when every answer character is one token it has seen in the passage.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for text in texts for c in text.replace(NL_TOKEN, "\n")})
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + [NL_TOKEN])}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    # <NL> is an ordinary (not special) token: it must survive decoding so stop rules can see it
    tokenizer.add_tokens([NL_TOKEN])
    return tokenizer


def build_tiny_model(cfg: ModelConfig, tokenizer):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny_hidden,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        intermediate_size=cfg.tiny_intermediate,
        max_position_embeddings=cfg.max_length,
        rotary_pct=1.0,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPTNeoXForCausalLM(config)
    return model.to(torch.float32)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if trust_remote_code:
        log.warning("trust_remote_code is on: code from %s will run on this machine", name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise InputError(name, f"could not load the tokenizer ({str(err).splitlines()[0]})",
                         fix="pass a local model directory, or a hub id on a machine with network access") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_base_model(cfg: ModelConfig):
    """A pretrained causal LM from a hub id or a local path, 8-/4-bit on CUDA when asked.
    Safetensors only unless `model.allow_pickle` (a pickle checkpoint can run code when loaded)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": _torch_dtype(cfg.dtype), "trust_remote_code": cfg.trust_remote_code,
                    "use_safetensors": None if cfg.allow_pickle else True}
    if cfg.allow_pickle:
        log.warning("model.allow_pickle is on: a pickle checkpoint of %s may run code when loaded", cfg.name)
    if cfg.trust_remote_code:
        log.warning("trust_remote_code is on: code from %s will run on this machine", cfg.name)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.load_in_8bit or cfg.load_in_4bit:
        if not torch.cuda.is_available():
            raise InputError("model.load_in_8bit" if cfg.load_in_8bit else "model.load_in_4bit",
                             "8-bit/4-bit loading needs a CUDA GPU (bitsandbytes)", fix="set it to false on this machine, or run on a GPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=cfg.load_in_8bit, load_in_4bit=cfg.load_in_4bit,
                                                           bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")
        kwargs["device_map"] = "auto"
    elif torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    try:
        return AutoModelForCausalLM.from_pretrained(cfg.name, **kwargs)
    except OSError as err:
        first = str(err).splitlines()[0]
        fix = ("only safetensors weights are loaded by default; convert the checkpoint, or set model.allow_pickle=true if you trust it"
               if "safetensors" in first.lower() else "pass a local model directory, or a hub id on a machine with network access")
        raise InputError(cfg.name, f"could not load the model ({first})", fix=fix) from None


def lora_target_modules(settings: LoraSettings):
    return "all-linear" if settings.target_modules == ["all-linear"] else list(settings.target_modules)


def attach_lora(model, settings: LoraSettings, quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap `model` with a LoRA adapter (or leave every weight trainable when LoRA is off)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if not settings.enabled:
        return model
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=lora_target_modules(settings), bias=settings.bias, task_type="CAUSAL_LM",
                        use_dora=settings.use_dora, use_rslora=settings.use_rslora)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise InputError("lora.target_modules", str(err).splitlines()[0],
                         fix="name modules that exist in this model (GPT-NeoX: query_key_value, dense, dense_h_to_4h, dense_4h_to_h) or all-linear") from None


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_trained(model, tokenizer, directory: Path) -> None:
    """Adapter (or full weights) and tokenizer, as safetensors."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def load_trained(base_dir: Path | str, adapter_dir: Path | None, cfg: ModelConfig, lora_enabled: bool):
    """Reload a model for evaluation: the saved base (tiny) or pretrained base, plus the adapter."""
    from transformers import AutoModelForCausalLM

    if adapter_dir is not None and not lora_enabled:
        model = AutoModelForCausalLM.from_pretrained(adapter_dir, use_safetensors=True)
        return model
    if str(base_dir) == cfg.name:
        model = load_base_model(cfg)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    return model
