"""Batches for generation whose shared prompt prefix runs once: planning and the prefilled KV cache.

Prompts that share most of their tokens (the questions of one passage) are batched together and
run as one unpadded sequence: their common prefix once, then each prompt's remaining tokens but
its last, each branch masked to see the prefix and itself at the positions it has alone (the mask
of training's shared-prefix rows). Each row's KV cache is gathered from its group's, left-padded,
and `generate` runs only the last prompt token of every row (`DecodingConfig.share_prefix`; the
same answers, tested in tests/test_generation.py and tests/test_gemma.py). Prompt prefill is
compute-bound, JSQuAD has about four questions per passage, and no padding is computed (what this
saves is measured in BENCHMARKS.md).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from jsquad_lora.encoding.attention import masks_by_layer_type, shared_prefix_mask, sliding_window
from jsquad_lora.model.layers import unwrapped


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


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(map(len, rows))
    return [[pad_id] * (width - len(r)) + r for r in rows], [[0] * (width - len(r)) + [1] * len(r) for r in rows]


def batch_inputs(
    model, encoded: list[list[int]], batch: list[tuple[int, int]], pad_id: int, device, room: int = 0
) -> dict:
    """input_ids, attention_mask and (when prefixes are shared) the prefilled cache for one batch.

    Sharing on: each group (rows with the same prefix) runs as ONE unpadded sequence, its prefix
    once and then every row's remaining prompt tokens but the last, each branch masked to see only
    the prefix and itself at its own positions (`collators.SharedPrefixCollator`'s mask, as
    training's shared-prefix rows). Each row's cache is then gathered from its group's:
    left-padded to the batch's widest prompt minus one, so that `generate` runs only the last
    prompt token of every row. No padding is computed, and no token twice. The cache has `room`
    more positions allocated (the tokens generation appends), so appending copies nothing."""
    if not any(n for _, n in batch) or model.config._attn_implementation != "sdpa":
        ids, mask = _left_pad([encoded[i] for i, _ in batch], pad_id)
        return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}
    groups: dict[tuple[int, ...], list[int]] = {}  # prefix → the batch rows that share it
    for row, (i, n) in enumerate(batch):
        groups.setdefault(tuple(encoded[i][:n]), []).append(row)
    cached = max(len(encoded[i]) for i, _ in batch) - 1  # every prompt but its last token
    # where each row's cached tokens lie in the groups' packed sequences, laid end to end;
    # padding points one past the end, at a zero key/value
    where = [[] for _ in batch]
    packed_layers, offset = [], 0
    for prefix, rows in groups.items():
        rests = [encoded[batch[r][0]][len(prefix) : -1] for r in rows]
        packed_layers.append(_prefill_group(model, list(prefix), rests, device))
        start = offset + len(prefix)
        for r, rest in zip(rows, rests):
            where[r] = list(range(offset, offset + len(prefix))) + list(range(start, start + len(rest)))
            start += len(rest)
        offset = start
    take = torch.tensor([[offset] * (cached - len(w)) + w for w in where], device=device)
    cache = DynamicCache()
    cache.layers = []
    for per_group in zip(*packed_layers):  # one layer: (keys, values) of every group
        keys, values = (torch.cat([*parts, parts[0][:, :, :1] * 0], dim=2)[0] for parts in zip(*per_group))
        cache.layers.append(GrowingLayer(*(t[:, take].transpose(0, 1) for t in (keys, values)), room=room))
    ids, mask = _left_pad([encoded[i] for i, _ in batch], pad_id)
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
        _cache_argument(): cache,
    }


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views of a buffer with `room` free positions:
    appending writes in place instead of `torch.cat` copying the whole cache every step (a batch
    of 32 Gemma rows copied ~350 MB a step). Past its room it grows as a DynamicLayer does."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        shape = (*keys.shape[:2], keys.shape[2] + room, keys.shape[3])
        self.key_buffer, self.value_buffer = keys.new_empty(shape), values.new_empty(shape)
        self._fill(keys, values, 0)

    def _fill(self, keys: torch.Tensor, values: torch.Tensor, start: int) -> None:
        end = start + keys.shape[-2]
        self.key_buffer[:, :, start:end] = keys
        self.value_buffer[:, :, start:end] = values
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start = self.keys.shape[-2]
        in_buffer = self.keys.data_ptr() == self.key_buffer.data_ptr()  # not replaced (reordered, cropped)
        if not in_buffer or start + key_states.shape[-2] > self.key_buffer.shape[-2]:
            return super().update(key_states, value_states, *args, **kwargs)
        self._fill(key_states, value_states, start)
        return self.keys, self.values


def _prefill_group(model, prefix: list[int], rests: list[list[int]], device) -> list:
    """Per layer (keys, values) of one packed sequence: `prefix`, then each of `rests` as a branch
    that sees the prefix and itself (shapes [1, heads, tokens, head dim])."""
    ids, positions, segments = list(prefix), list(range(len(prefix))), [0] * len(prefix)
    for k, rest in enumerate(rests, 1):
        ids += rest
        positions += range(len(prefix), len(prefix) + len(rest))
        segments += [k] * len(rest)
    position_ids = torch.tensor([positions])
    mask = shared_prefix_mask(torch.tensor([segments]))[:, None]  # training's shared-prefix mask, one row
    attention = masks_by_layer_type(mask, position_ids, sliding_window(model.config))
    attention = {k: v.to(device) for k, v in attention.items()} if isinstance(attention, dict) else attention.to(device)
    cache = DynamicCache()  # full layers, also for sliding-window models: rows are gathered by index
    decoder = unwrapped(model).get_decoder()  # no LM head: the prefill needs no logits
    decoder(
        input_ids=torch.tensor([ids]).to(device),
        attention_mask=attention,
        position_ids=position_ids.to(device),
        use_cache=True,
        **{_cache_argument(): cache},
    )
    if cache.get_seq_length() != len(ids):
        raise RuntimeError(f"{type(decoder).__name__} did not fill the KV cache it was given; set share_prefix=False")
    return [(layer.keys, layer.values) for layer in cache.layers]
