"""The training batch order: a pure function of (seed, epoch) over global batches, each dealt in per-process
parts, so a resumed run, or N processes with batch B/N, see the very batches of one uninterrupted process."""

from __future__ import annotations

import random
from typing import Iterator, Sequence

import torch


class EpochBatchOrder(torch.utils.data.Sampler):
    """Indices in an order fixed by (seed, epoch). `length_grouped`: shuffled chunks of 64 batches
    are sorted by length and cut into batches whose order is shuffled; the one partial batch comes last."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, grouped: bool):
        self.lengths, self.batch_size, self.seed, self.grouped = list(lengths), batch_size, seed, grouped
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if not self.grouped:
            return iter(order)
        chunk = self.batch_size * 64
        batches = []
        for i in range(0, len(order), chunk):
            part = sorted(order[i : i + chunk], key=lambda j: -self.lengths[j])
            batches += [part[k : k + self.batch_size] for k in range(0, len(part), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        rng.shuffle(full)
        return iter([i for b in full + partial for i in b])
