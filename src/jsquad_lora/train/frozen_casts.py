"""The frozen linear weights under LoRA held in the autocast dtype for the length of a training run.

Autocast caches its casts of trainable leaf weights only, so every frozen base weight under LoRA (Gemma 3
270M: 100M of them) was copied to bfloat16 at every forward pass. Held in bfloat16 while training runs,
the same bfloat16 values reach the same kernels: the loss and gradients are bit-identical (tested in
tests/test_gemma.py). The float32 weights are put back when training ends, so the merge and evaluation
see the weights they would have seen. The output layer is left to `train.losses.head_logits` (its weight is
the input embedding too, which must stay float32). Written by hand: neither torch nor peft has it."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from jsquad_lora.model.layers import unwrapped


@contextmanager
def frozen_linears_cast(model, dtype: torch.dtype | None):
    """Within the block, every frozen float32 `nn.Linear` of `model` except the embeddings holds its weight in
    `dtype` (None: nothing changes); on leaving, the original float32 tensors are put back."""
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    if dtype is not None:
        base = unwrapped(model)
        embeddings = {id(m.weight) for m in (base.get_input_embeddings(), base.get_output_embeddings()) if m}
        with torch.no_grad():
            for module in model.modules():
                if type(module) is not torch.nn.Linear or id(module.weight) in embeddings:
                    continue
                for param in (module.weight, module.bias):
                    if param is not None and not param.requires_grad and param.dtype == torch.float32:
                        swapped.append((param, param.data))
                        param.data = param.data.to(dtype)
    try:
        yield len(swapped)
    finally:
        for param, original in swapped:
            param.data = original
