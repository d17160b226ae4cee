"""Prompt token ids (one function for training and generation), fitting a prompt to a length budget,
and training examples with answer-only labels.

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

from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError

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


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The token ids of an answer as training appends them to the prompt ids (no special tokens, no EOS)."""
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


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
        raise InputError(
            "model.max_length",
            f"question {question.id}: the prompt is {len(ids)} tokens even with its passage removed, "
            f"more than the {budget} tokens it may take",
            fix="raise model.max_length, or lower eval.max_new_tokens or prompt.fewshot",
        )
    return cut, ids, True


def target_ids(tokenizer, question: Question) -> list[int]:
    """What training teaches the model to say: the first gold answer's ids + EOS, or EOS alone for a question
    its passage does not answer (the model abstains by ending at once)."""
    return (answer_ids(tokenizer, question.answers[0]) if question.answers else []) + [tokenizer.eos_token_id]


def encode_train_example(question: Question, render: Render, tokenizer, max_length: int) -> tuple[Encoded, bool]:
    """prompt ids + first-gold-answer ids + EOS (EOS alone without an answer); labels only on answer + EOS."""
    answer = target_ids(tokenizer, question)
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
