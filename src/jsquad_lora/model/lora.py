"""The LoRA adapter (peft): attached for training, saved, loaded back, and merged for generation.

peft does the work; what is written here are the choices: 8-/4-bit bases through
`prepare_model_for_kbit_training`, LoRA's dropout with sparse masks (`dropout.py`), safetensors only, and
merging for generation except into quantised weights.
"""

from __future__ import annotations

from pathlib import Path

from jsquad_lora.config.schema import LoraSettings, ModelConfig
from jsquad_lora.errors import InputError
from jsquad_lora.model.dropout import use_sparse_dropout
from jsquad_lora.model.load import load_base_model


def lora_target_modules(settings: LoraSettings):
    return "all-linear" if settings.target_modules == ["all-linear"] else list(settings.target_modules)


def kbit_preparation_kwargs(gradient_checkpointing: bool) -> dict:
    """The arguments of peft's `prepare_model_for_kbit_training` beside the model: none with gradient
    checkpointing (peft's defaults, the call of the reference write-up), else checkpointing off."""
    return {} if gradient_checkpointing else {"use_gradient_checkpointing": False}


def attach_lora(model, settings: LoraSettings, quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap `model` with a LoRA adapter (or leave every weight trainable when LoRA is off). A quantised
    model goes through peft's `prepare_model_for_kbit_training` first (frozen, non-int8 weights in
    float32, gradient checkpointing as `gradient_checkpointing` says)."""
    import peft
    from peft import LoraConfig, get_peft_model

    if quantized:
        model = peft.prepare_model_for_kbit_training(model, **kbit_preparation_kwargs(gradient_checkpointing))
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if not settings.enabled:
        return model
    targets, layers = lora_target_modules(settings), top_layer_indices(model, settings.top_layers)
    if layers is not None and targets == "all-linear":  # peft takes layers_to_transform with a list of names only
        targets, layers = linear_layers_in(model, layers), None
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias=settings.bias,
        task_type="CAUSAL_LM",
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
        layers_to_transform=layers,
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise InputError(
            "lora.target_modules",
            str(err).splitlines()[0],
            fix="name modules that exist in this model "
            "(GPT-NeoX: query_key_value, dense, dense_h_to_4h, dense_4h_to_h) or all-linear",
        ) from None
    use_sparse_dropout(model)  # the same dropout, its CPU mask ~7x cheaper (dropout.py)
    return model


def top_layer_indices(model, top_layers: int | None) -> list[int] | None:
    """The indices of the last `top_layers` decoder layers (None: every layer), for peft's `layers_to_transform`."""
    if top_layers is None:
        return None
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    total = config.num_hidden_layers
    if top_layers > total:
        raise InputError(
            "lora.top_layers", f"is {top_layers} but the model has {total} layers", fix=f"use 1 to {total} or null"
        )
    return list(range(total - top_layers, total))


def linear_layers_in(model, layers: list[int]) -> list[str]:
    """The full names of the linear modules inside decoder layers `layers` (`model.layers.9.mlp.up_proj`)."""
    import re

    import torch

    wanted = {str(i) for i in layers}
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and (m := re.search(r"\.(\d+)\.", name)) and m.group(1) in wanted
    ]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_trained(model, tokenizer, directory: Path) -> None:
    """Adapter (or full weights) and tokenizer, as safetensors."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def load_trained(model, adapter_dir: Path, lora_enabled: bool):
    """The trained model of a run for generation: `model` (the base) with the saved LoRA adapter
    merged in, or the saved full weights when the run fine-tuned every weight."""
    if not lora_enabled:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(adapter_dir, use_safetensors=True)
    from peft import PeftModel

    return merged(PeftModel.from_pretrained(model, adapter_dir))


def save_merged(cfg: ModelConfig, base: str | Path, adapter_dir: Path, target: Path, tokenizer) -> Path:
    """The base model `base` (unquantised, in `cfg.dtype`) with the LoRA adapter of `adapter_dir` merged into
    its weights (peft's `merge_and_unload`), saved with `tokenizer` as a safetensors model directory
    `target` (atomic): a whole model for tools that cannot apply the adapter (vLLM's GPT-NeoX)."""
    import dataclasses
    import gc

    import torch
    from peft import PeftModel

    from jsquad_lora.util.files import atomic_dir

    plain = dataclasses.replace(cfg, name=str(base), gguf_file=None, load_in_8bit=False, load_in_4bit=False)
    model = PeftModel.from_pretrained(load_base_model(plain), adapter_dir).merge_and_unload()
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return target


def merged(model):
    """LoRA folded into the base weights for generation: peft's unmerged layers run two extra
    small matmuls per linear layer per token (the cost is measured in BENCHMARKS.md §0).
    Quantised bases keep the adapter unmerged (merging would round it into 8-/4-bit weights)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    base = model.get_base_model()
    if getattr(base, "is_loaded_in_8bit", False) or getattr(base, "is_loaded_in_4bit", False):
        return model
    return model.merge_and_unload()
