"""Greedy decoding's float32 output layer at about bfloat16's cost: the same arg-max, screened.

Greedy decoding reads one thing from a row's logits: the arg-max. The screen computes every logit
in bfloat16, bounds each one's error, and recomputes in float32 only the tokens whose upper bound
reaches the row's best lower bound; every other logit comes back as -inf. So the arg-max is the
one the float32 head gives (as exactly as two float32 matmuls agree: to float32 rounding). On a
CPU with AVX512-BF16, Gemma 3's 262k-word head for 32 rows took 51 ms in bfloat16 against
176 ms in float32 (BENCHMARKS.md, issue 14); the head is most of a decode step of a small model.

The bound: with h̃, w̃ the bfloat16 roundings of h, w (unit roundoff u = 2^-8), products exact in
float32, d terms summed in float32 (γ = d·2^-24 / (1 - d·2^-24)) and the sum rounded to bfloat16,
|h·w - s| ≤ ((2u + u²) + γ(1+u)² + u(1+u)²(1+γ)) Σ|h_i||w_i|, and Σ|h_i||w_i| ≤ ‖h‖‖w‖
(Cauchy-Schwarz); a factor 2 on top covers summation orders the library may choose.

Written here: no library screens an arg-max this way. Only for plain greedy decoding (a logits
processor would read the -inf logits), heads without bias, float32 weights on a CPU with fast
bfloat16 (`devices.fast_cpu_bf16`).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

import torch

_U = 2.0**-8
#: attribute of a head holding its screen: (its weight, the weight's version then, bfloat16 copy, row
#: norms), made once per weight (serving calls generation once per batch) and freed with the head
_ATTRIBUTE = "_jsquad_lora_screen"


def error_factor(d: int) -> float:
    """c such that |h·w - bf16 logit| ≤ c‖h‖‖w‖ for d-dimensional h, w (see the module docstring)."""
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    return 2 * ((2 * _U + _U**2) + gamma * (1 + _U) ** 2 + _U * (1 + _U) ** 2 * (1 + gamma))


def _screen_of(head: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    weight = head.weight
    cached = getattr(head, _ATTRIBUTE, None)
    if cached is None or cached[0]() is not weight or cached[1] != weight._version:
        with torch.no_grad():
            cached = (weakref.ref(weight), weight._version, weight.to(torch.bfloat16), weight.norm(dim=1))
        object.__setattr__(head, _ATTRIBUTE, cached)  # not a buffer: never saved with the model
    return cached[2], cached[3]


class ScreenedHead(torch.nn.Module):
    """A bias-free float32 linear output layer whose logits are exact (float32) for every token that
    can be a row's arg-max and -inf elsewhere."""

    #: above this share of the vocabulary as candidates, the full float32 head is cheaper
    MAX_SHARE = 0.25
    #: above this many positions at once (a model whose forward has no `logits_to_keep` runs the head
    #: over whole prompts), the screen's [positions, vocabulary] temporaries would cost 4x the head's
    #: own output: the plain head then
    MAX_ROWS = 256

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head
        self.low, self.norms = _screen_of(head)
        self.factor = error_factor(head.weight.shape[1])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.head.weight
        flat = hidden.reshape(-1, hidden.shape[-1]).contiguous().to(weight.dtype)
        if flat.shape[0] > self.MAX_ROWS:
            return torch.nn.functional.linear(flat, weight).reshape(*hidden.shape[:-1], weight.shape[0])
        rough = torch.nn.functional.linear(flat.to(torch.bfloat16), self.low).float()
        slack = (self.factor * flat.norm(dim=1))[:, None] * self.norms[None, :]
        best_floor = (rough - slack).amax(dim=1, keepdim=True)
        candidates = ((rough + slack) >= best_floor).any(dim=0).nonzero().squeeze(1)
        finite = bool(torch.isfinite(best_floor).all())  # else NaN/inf rows: the full head, as without a screen
        if not finite or candidates.numel() > self.MAX_SHARE * weight.shape[0]:
            logits = torch.nn.functional.linear(flat, weight)
        else:
            exact = torch.nn.functional.linear(flat, weight[candidates])
            logits = rough.fill_(float("-inf")).index_copy_(1, candidates, exact.to(rough.dtype))
        return logits.reshape(*hidden.shape[:-1], weight.shape[0])


def can_screen(head) -> bool:
    """Whether `head` is an output layer the screen applies to, on this machine."""
    from jsquad_lora.util.devices import fast_cpu_bf16

    return (
        type(head) is torch.nn.Linear
        and head.bias is None
        and head.weight.dtype == torch.float32
        and head.weight.device.type == "cpu"
        and fast_cpu_bf16()
    )


@contextmanager
def screened_head(model, enabled: bool) -> Iterator[None]:
    """The model's output layer replaced by a `ScreenedHead` inside the block, where it applies."""
    from jsquad_lora.model.layers import output_layer_replaced

    with output_layer_replaced(model, lambda head: ScreenedHead(head) if enabled and can_screen(head) else None):
        yield
