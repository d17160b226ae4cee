"""LoRA's input dropout, with a mask that costs random draws for the dropped elements only.

The same distribution as `torch.nn.Dropout(p)` (each element zeroed independently with
probability p, the rest scaled by 1/(1-p)), drawn differently: the gaps between dropped elements
of a Bernoulli(p) sequence are Geometric(p), so for LoRA's small p (0.05) the mask needs about
p·n draws instead of n. On CPUs `bernoulli_` draws every element serially (~6 ns each): it was 19 %
of a Gemma 3 270M training step (BENCHMARKS.md, issue 14). Elsewhere (CUDA) and for large p,
`torch.nn.functional.dropout` runs unchanged. Draws come from torch's generator, so
`torch.manual_seed` and the Trainer's checkpointed RNG state make it reproducible and resumable.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: above this p, drawing every element is cheaper than drawing the gaps
SPARSE_UP_TO = 0.25


def dropped_positions(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted flat indices of the dropped elements of an n-element Bernoulli(p) mask (int64)."""
    if n == 0 or p <= 0:
        return torch.empty(0, dtype=torch.long)
    chunk = int(n * p + 8 * math.sqrt(n * p) + 16)  # enough gaps in all but ~1e-15 of the cases
    ends = _geometric_gaps(chunk, p, generator).cumsum_(0)
    while ends[-1] <= n:  # float64 holds these integer sums exactly (n < 2**53)
        ends = torch.cat([ends, _geometric_gaps(chunk, p, generator).cumsum_(0).add_(ends[-1])])
    ends = ends[: int(torch.searchsorted(ends, float(n), right=True))]
    return ends.long().sub_(1)  # a gap of g trials ends on the g-th element: index g-1 after the last


def _geometric_gaps(k: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """k Geometric(p) draws on {1, 2, ...} (float64): ceil(log V / log(1-p)) for V uniform on (0, 1],
    since P(gap > j) = P(V < (1-p)^j) = (1-p)^j. Vectorised; `geometric_` draws one at a time, 4x slower."""
    uniform = torch.rand(k, dtype=torch.float64, generator=generator)
    return torch.rsub(uniform, 1).log_().div_(math.log1p(-p)).ceil_().clamp_min_(1)


class SparseDropout(nn.Module):
    """`nn.Dropout(p)` whose CPU mask draws only the dropped positions (see the module docstring)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or self.p > SPARSE_UP_TO:
            return nn.functional.dropout(x, self.p, training=True)
        flat = (x * (1 / (1 - self.p))).reshape(-1)  # a new tensor: filled in place, no copy
        return flat.index_fill_(0, dropped_positions(x.numel(), self.p), 0).view_as(x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_sparse_dropout(model) -> int:
    """Replace every LoRA layer's `nn.Dropout` with `SparseDropout` of the same p; returns how many."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is nn.Dropout and dropout.p > 0:
                sparse = SparseDropout(dropout.p)
                sparse.train(dropout.training)
                dropouts[name] = sparse
                replaced += 1
    return replaced
