"""Batches for generation whose shared prompt prefix runs once: planning and the prefilled KV cache.

Prompts that share most of their tokens (the questions of one passage) are batched together and
their common prefix is run once: its KV cache is copied to each of their rows, each row is
[padding, prefix, padding, rest of the prompt] with the mask zero on padding, and `generate`
continues from the cache (`DecodingConfig.share_prefix`; the same answers, tested in
tests/test_generation.py). Prompt prefill is compute-bound, and JSQuAD has about four questions per
passage (what this saves is measured in BENCHMARKS.md).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Sequence

import torch


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def plan_batches(encoded: list[list[int]], batch_size: int, share_prefix: bool) -> list[list[tuple[int, int]]]:
    """Batches of (prompt index, length of the prefix computed once for its group), longest first.

    Sharing on: prompts sharing at least half of the longer one's tokens form a group (found
    next to each other in lexicographic order) whose common prefix, at most all but the last
    token of its shortest prompt, is run once; groups are kept whole within a batch where they
    fit. Off: every prefix length is 0 and the batches are plain longest-first chunks."""
    if not share_prefix or min(map(len, encoded), default=2) < 2:
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        return [[(i, 0) for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
    groups: list[tuple[list[int], int]] = []
    for i in sorted(range(len(encoded)), key=lambda i: encoded[i]):
        if groups:
            members, shared = groups[-1]
            first = encoded[members[0]]
            common = _common_length(first, encoded[i])
            if 2 * common >= max(len(first), len(encoded[i])) and len(members) < batch_size:
                groups[-1] = (members + [i], min(shared, common, len(encoded[i]) - 1))
                continue
        groups.append(([i], len(encoded[i]) - 1))
    groups.sort(key=lambda g: -max(len(encoded[i]) for i in g[0]))
    batches: list[list[tuple[int, int]]] = [[]]
    for members, shared in groups:
        if len(batches[-1]) + len(members) > batch_size:
            batches.append([])
        batches[-1] += sorted(((i, shared) for i in members), key=lambda row: -len(encoded[row[0]]))
    return [b for b in batches if b]


@lru_cache(maxsize=1)
def _cache_argument() -> str:
    """The keyword `forward`/`generate` take a KV cache under: `cache` in recent transformers 5,
    `past_key_values` before."""
    from transformers import GenerationMixin

    return (
        "cache"
        if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
        else "past_key_values"
    )


@lru_cache(maxsize=8)
def _keeps_last_logits_only(model_class: type) -> bool:
    """Whether the model's `forward` takes `logits_to_keep` (the prefix pass then skips the LM head)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(map(len, rows))
    return [[pad_id] * (width - len(r)) + r for r in rows], [[0] * (width - len(r)) + [1] * len(r) for r in rows]


def batch_inputs(model, encoded: list[list[int]], batch: list[tuple[int, int]], pad_id: int, device) -> dict:
    """input_ids, attention_mask and (when prefixes are shared) the prefilled cache for one batch."""
    prefixes = [tuple(encoded[i][:n]) for i, n in batch]
    shared: dict[tuple[int, ...], int] = {}  # prefix run once → its row in the prefill batch
    for prefix in prefixes:
        if prefix:
            shared.setdefault(prefix, len(shared))
    if not shared:
        ids, mask = _left_pad([encoded[i] for i, _ in batch], pad_id)
        return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}
    prefix_ids, prefix_mask = _left_pad([list(p) for p in shared], pad_id)
    rest_ids, rest_mask = _left_pad([encoded[i][n:] for i, n in batch], pad_id)
    mask = torch.tensor(prefix_mask, device=device)
    key = _cache_argument()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model forwards **kwargs
    extra = {"logits_to_keep": 1} if _keeps_last_logits_only(type(base)) else {}
    out = model(
        input_ids=torch.tensor(prefix_ids, device=device),
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        **extra,
    )
    cache = getattr(out, key, None)
    cache = out.past_key_values if cache is None else cache
    rows = [shared[prefix] for prefix in prefixes]
    cache.reorder_cache(torch.tensor(rows, device=device))  # one copy of its prefix's cache per row
    ids = [prefix_ids[g] + r for g, r in zip(rows, rest_ids)]
    full_mask = [prefix_mask[g] + m for g, m in zip(rows, rest_mask)]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(full_mask, device=device),
        key: cache,
    }
