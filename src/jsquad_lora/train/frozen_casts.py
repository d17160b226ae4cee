"""Frozen linear layers under LoRA that cast their weight to the autocast dtype once, not at every call.

Autocast caches its casts of trainable leaf weights only, so every frozen base weight under LoRA (Gemma 3
270M: 100M of them) was copied to bfloat16 at every forward pass of every step. Within `frozen_linears_cast`,
each frozen `nn.Linear` keeps one bfloat16 copy of its weight and bias and hands it to `F.linear` while autocast
is on: the same bfloat16 values reach the same kernel, so the loss and gradients are bit-identical (tested in
tests/test_gemma.py). A forward pass without autocast (a float32 evaluation inside training, the float32
recipe) uses the float32 weight as before: the parameters themselves are never touched. The copy is made again
when the weight changes (its version counter) or moves, and is freed when the block ends. The output layer is
left to `train.losses.head_logits` (its weight is the input embedding too). Written by hand: neither torch nor
peft has it."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from jsquad_lora.model.layers import unwrapped


def _cast_once_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = module.weight, module.bias
    device = x.device.type
    if (
        not torch.is_autocast_enabled(device)
        or weight.requires_grad
        or (bias is not None and bias.requires_grad)
        or weight.dtype != torch.float32
    ):
        return F.linear(x, weight, bias)
    dtype = torch.get_autocast_dtype(device)
    key = (weight.data_ptr(), weight._version, weight.device, dtype)
    cached = module.__dict__.get("_autocast_weight")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype))
        module.__dict__["_autocast_weight"] = cached  # an attribute, not a buffer: never saved, never moved
    return F.linear(x.to(dtype), cached[1], cached[2])


@contextmanager
def frozen_linears_cast(model, enabled: bool = True):
    """Within the block, every frozen `nn.Linear` of `model` but the output layer casts its weight to the
    autocast dtype once (see the module docstring); yields how many layers do. On leaving, the layers are as
    they were and the copies are freed."""
    patched: list[torch.nn.Linear] = []
    if enabled:
        head = unwrapped(model).get_output_embeddings()
        for module in model.modules():
            if type(module) is torch.nn.Linear and module is not head and not module.weight.requires_grad:
                module.forward = _cast_once_forward.__get__(module)
                patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_autocast_weight", None)
