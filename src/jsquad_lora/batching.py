"""Tokenised training examples with answer-only labels, the prompt-length policy, and collation.

Prompt and answer are tokenised apart and concatenated (prompt ids + answer ids + EOS), so the
prompt ids seen in training are exactly the ids the model sees at evaluation, whatever the
tokenizer does with the trailing space of `システム: ` (the classic response-masking bug).
Labels are -100 on the prompt: the loss is on the answer and EOS only.

Over-long prompts (policy, stated once): passage characters are removed until the prompt fits
`max_length - answer budget`; at training time from the side of the passage away from the first
gold answer (the answer span is never cut), at evaluation from the end. The count is reported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

from .data import Question

Render = Callable[[Question], str]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The token ids of a prompt, as both training and generation see them.

    The tokenizer's own special tokens are added (a BOS where the model expects one) except an
    EOS at the end (sentencepiece T5Tokenizer, rinna's class, appends `</s>` to every text), and
    except when the prompt already starts with the BOS text (chat templates write it themselves).
    """
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    ids = tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]
    if ids and ids[-1] == tokenizer.eos_token_id and not (eos and prompt.endswith(eos)):
        ids = ids[:-1]
    return ids


def _cut_passage(question: Question, keep: int, around_answer: bool) -> Question:
    """`question` with its passage shortened to `keep` characters (the answer span kept if asked)."""
    context = question.context
    if keep >= len(context):
        return question
    start = 0
    if around_answer and question.answer_starts:
        a_start = max(0, question.answer_starts[0])
        a_end = a_start + len(question.answers[0])
        # centre the window on the answer, clamped to the passage
        start = min(max(0, (a_start + a_end) // 2 - keep // 2), len(context) - keep)
        start = min(start, a_start)
        if a_end - start > keep:
            start = a_start
    return dataclasses.replace(
        question, context=context[start : start + keep], answer_starts=tuple(s - start for s in question.answer_starts)
    )


def fit_question(
    question: Question, render: Render, tokenizer, budget: int, *, around_answer: bool
) -> tuple[Question, list[int], bool]:
    """`question` with its passage shortened until its prompt fits `budget` tokens:
    (question as rendered, prompt ids, was_truncated)."""
    ids = prompt_ids(tokenizer, render(question))
    if len(ids) <= budget:
        return question, ids, False
    keep, cut = len(question.context), question
    for _ in range(30):
        overflow = len(ids) - budget
        if overflow <= 0:
            return cut, ids, True
        # characters per token of this prompt: shorten by a proportional amount (at least 1)
        ratio = max(1.0, len(render(cut)) / max(1, len(ids)))
        keep = max(0, keep - max(1, int(overflow * ratio)))
        cut = _cut_passage(question, keep, around_answer)
        ids = prompt_ids(tokenizer, render(cut))
        if keep == 0:
            break
    if len(ids) > budget:
        raise ValueError(
            f"question {question.id}: the prompt is {len(ids)} tokens even with a shortened passage; "
            "raise model.max_length"
        )
    return cut, ids, True


def encode_train_example(question: Question, render: Render, tokenizer, max_length: int) -> tuple[Encoded, bool]:
    """prompt ids + first-gold-answer ids + EOS; labels only on answer + EOS."""
    answer = tokenizer(question.answers[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    _, ids, truncated = fit_question(question, render, tokenizer, max_length - len(answer), around_answer=True)
    return Encoded(ids + answer, [-100] * len(ids) + answer), truncated


def encode_train_set(
    questions: Sequence[Question], render: Render, tokenizer, max_length: int
) -> tuple[list[Encoded], int]:
    """All training examples and the number whose passage was shortened."""
    out, truncated = [], 0
    for q in questions:
        example, cut = encode_train_example(q, render, tokenizer, max_length)
        out.append(example)
        truncated += cut
    return out, truncated


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
    token prefix computed once. Exactly equivalent to the separate examples (each branch sees
    the prefix and itself at the same positions), at a fraction of the tokens: all questions of
    a passage share the prompt up to the question, which is most of it.

    A row also stops growing at `max_tokens` (one example alone may exceed it): attention costs
    the square of a row's width, and examples whose passages were shortened differently share
    almost nothing: without the cap they made rows of up to 7,328 tokens, and the 5 costliest
    batches carried 43 % of an epoch's attention work (benchmarks/row_widths.py, 4 rows per step)."""
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


class _PaddingCollator:
    """Right-padding to the longest row of a batch, with the padding counts `padding_fraction` reads."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.real_tokens = 0
        self.padded_tokens = 0

    def _width(self, features: list[dict]) -> int:
        width = max(len(f["input_ids"]) for f in features)
        self.real_tokens += sum(len(f["input_ids"]) for f in features)
        self.padded_tokens += width * len(features)
        return width

    @staticmethod
    def _pad(features: list[dict], key: str, value: int, width: int):
        import torch

        return torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features])


class SharedPrefixCollator(_PaddingCollator):
    """Right-pads shared-prefix rows and builds their 4-D boolean attention mask (True = attend):
    causal, and a branch sees the prefix and itself only. Needs sdpa attention.

    With `sliding_window` (models mixing sliding-window and global layers, e.g. Gemma 3) the mask
    is a dict per layer type, as such models take it: the sliding layers' mask also drops keys
    `sliding_window` or more positions back, by position id, exactly as for the separate examples."""

    def __init__(self, pad_token_id: int, sliding_window: int | None = None):
        super().__init__(pad_token_id)
        self.sliding_window = sliding_window

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = self._width(features)
        segments = self._pad(features, "segments", -1, width)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same = segments[:, :, None] == segments[:, None, :]
        mask = causal & (same | (segments[:, None, :] == 0)) & (segments[:, None, :] >= 0)
        mask |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no all-masked row)
        positions = self._pad(features, "position_ids", 0, width)
        attention: torch.Tensor | dict = mask[:, None]
        if self.sliding_window:
            near = positions[:, :, None] - positions[:, None, :] < self.sliding_window
            attention = {
                "full_attention": mask[:, None],
                "sliding_attention": (mask & near)[:, None],
            }  # near keeps the diagonal
        return {
            "input_ids": self._pad(features, "input_ids", self.pad_token_id, width),
            "labels": self._pad(features, "labels", -100, width),
            "position_ids": positions,
            "attention_mask": attention,
        }


class AnswerOnlyCollator(_PaddingCollator):
    """Right-pads a batch; padding gets label -100 and attention 0. Records padding counts."""

    def __call__(self, features: list[dict]) -> dict:
        width = self._width(features)
        ones = [{"mask": [1] * len(f["input_ids"])} for f in features]
        return {
            "input_ids": self._pad(features, "input_ids", self.pad_token_id, width),
            "labels": self._pad(features, "labels", -100, width),
            "attention_mask": self._pad(ones, "mask", 0, width),
        }


class FlatteningCollator:
    """Padding-free: one row per batch, examples concatenated, position ids restart per example
    (transformers' DataCollatorWithFlattening), so attention never crosses examples."""

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self.inner = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.inner([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        n = sum(len(f["input_ids"]) for f in features)
        self.real_tokens += n
        self.padded_tokens += n
        return batch


def padding_fraction(collator) -> float:
    """Share of the tokens the model processed that were padding (0 for padding-free)."""
    if not collator.padded_tokens:
        return 0.0
    return 1.0 - collator.real_tokens / collator.padded_tokens
