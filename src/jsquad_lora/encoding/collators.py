"""Collators: training rows (`tokenize.Encoded`, `packing.SharedPrefixRow`) into padded tensors,
and a meter that counts what padding the model processed.

Collators are pure (features in, batch out); `PaddingMeter` wraps any of them to count real and
processed tokens, which training reports as tokens/s and padding fraction.
"""

from __future__ import annotations

from typing import Callable

from jsquad_lora.encoding.attention import masks_by_layer_type, shared_prefix_mask


def _pad(features: list[dict], key: str, value: int, width: int):
    import torch

    return torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features])


def _width(features: list[dict]) -> int:
    return max(len(f["input_ids"]) for f in features)


class AnswerOnlyCollator:
    """Right-pads a batch to its longest row; padding gets label -100 and attention 0."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        width = _width(features)
        ones = [{"mask": [1] * len(f["input_ids"])} for f in features]
        return {
            "input_ids": _pad(features, "input_ids", self.pad_token_id, width),
            "labels": _pad(features, "labels", -100, width),
            "attention_mask": _pad(ones, "mask", 0, width),
        }


class SharedPrefixCollator:
    """Right-pads shared-prefix rows and builds their 4-D boolean attention mask (True = attend):
    causal, and a branch sees the prefix and itself only (attention.py). Needs sdpa attention.

    With `sliding_window` (models mixing sliding-window and global layers, e.g. Gemma 3) the mask
    is a dict per layer type, as such models take it: the sliding layers' mask also drops keys
    `sliding_window` or more positions back, by position id, exactly as for the separate examples."""

    def __init__(self, pad_token_id: int, sliding_window: int | None = None):
        self.pad_token_id = pad_token_id
        self.sliding_window = sliding_window

    def __call__(self, features: list[dict]) -> dict:
        width = _width(features)
        mask = shared_prefix_mask(_pad(features, "segments", -1, width))
        positions = _pad(features, "position_ids", 0, width)
        return {
            "input_ids": _pad(features, "input_ids", self.pad_token_id, width),
            "labels": _pad(features, "labels", -100, width),
            "position_ids": positions,
            "attention_mask": masks_by_layer_type(mask[:, None], positions, self.sliding_window),
        }


class FlatteningCollator:
    """Padding-free: one row per batch, examples concatenated, position ids restart per example
    (transformers' DataCollatorWithFlattening), so attention never crosses examples."""

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self.inner = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

    def __call__(self, features: list[dict]) -> dict:
        return self.inner([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])


class PaddingMeter:
    """Wraps a collator; counts the tokens it was given and the tokens of the batches it made."""

    def __init__(self, collate: Callable[[list[dict]], dict]):
        self.collate = collate
        self.reset()

    def reset(self) -> None:
        self.real_tokens = 0
        self.batch_tokens = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        self.real_tokens += sum(len(f["input_ids"]) for f in features)
        self.batch_tokens += batch["input_ids"].numel()
        return batch

    @property
    def padding_fraction(self) -> float:
        """Share of the tokens the model processed that were padding (0 for padding-free)."""
        return 1.0 - self.real_tokens / self.batch_tokens if self.batch_tokens else 0.0
