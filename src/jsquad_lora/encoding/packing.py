"""Shared-prefix rows: the questions of one passage in one training row, their common prompt once.

Exactly equivalent to the separate examples (each branch sees the prefix and itself at the same
positions, enforced by `collators.SharedPrefixCollator`'s mask), at a fraction of the tokens: all
questions of a passage share the prompt up to the question, which is most of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from jsquad_lora.encoding.tokens import Encoded


@dataclass(frozen=True)
class SharedPrefixRow:
    """Several examples of one passage in one row: their common prompt prefix once, then each
    example's remaining tokens (a branch). `segments` is 0 on the prefix and k on branch k;
    `position_ids` restart at the prefix length in every branch."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    segments: list[int]


def share_prefixes(
    examples: Sequence[Encoded], keys: Sequence[str], max_branches: int = 16, max_tokens: int | None = None
) -> list[SharedPrefixRow]:
    """Rows of up to `max_branches` examples with the same `keys` (their passage), the common
    token prefix computed once.

    A row also stops growing at `max_tokens` (one example alone may exceed it): attention costs
    the square of a row's width, and examples whose passages were shortened differently share
    almost nothing, so uncapped rows grow very wide and a few batches carry much of an epoch's
    attention work (measured by benchmarks/probes/row_widths.py; BENCHMARKS.md)."""
    groups: dict[str, list[Encoded]] = {}
    for example, key in zip(examples, keys):
        groups.setdefault(key, []).append(example)
    rows = []
    for members in groups.values():
        part: list[Encoded] = []
        for example in members:
            if part and (len(part) == max_branches or (max_tokens and _row_width(part + [example]) > max_tokens)):
                rows.append(_shared_row(part))
                part = []
            part.append(example)
        if part:
            rows.append(_shared_row(part))
    return rows


def _common_prefix(part: Sequence[Encoded]) -> int:
    """Tokens the examples share, ending before the first supervised token of every member, so
    that a branch starts on a prompt token (whose label is dropped: the row's previous token is
    not its own)."""
    common = min(next(i for i, t in enumerate(e.labels) if t != -100) for e in part) - 1
    for e in part[1:]:
        common = next((i for i in range(common) if e.input_ids[i] != part[0].input_ids[i]), common)
    return common


def _row_width(part: Sequence[Encoded]) -> int:
    common = _common_prefix(part)
    return common + sum(len(e.input_ids) - common for e in part)


def _shared_row(part: Sequence[Encoded]) -> SharedPrefixRow:
    common = _common_prefix(part)
    ids, labels, positions, segments = (
        list(part[0].input_ids[:common]),
        list(part[0].labels[:common]),
        list(range(common)),
        [0] * common,
    )
    for k, e in enumerate(part, 1):
        ids += e.input_ids[common:]
        labels += [-100] + e.labels[common + 1 :]
        positions += range(common, len(e.input_ids))
        segments += [k] * (len(e.input_ids) - common)
    return SharedPrefixRow(ids, labels, positions, segments)
