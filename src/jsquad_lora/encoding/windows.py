"""Passages longer than a prompt can hold, read in overlapping windows (SQuAD's doc_stride, in tokens).

Policy, stated once (training, evaluation, `ask` and `serve` all call `passage_windows`):
- A question whose prompt fits the budget is one window: the question itself, unchanged.
- Otherwise its passage is cut into windows at token boundaries of the passage tokenised alone. A window
  holds `room` passage tokens: the budget minus the prompt's other tokens, rounded down to a multiple of
  `ROOM_STEP` (at most `model.window_tokens` where set), so that questions of similar length cut a document
  the same way and share each window's prompt prefix in generation. Consecutive windows share `overlap`
  tokens. Each window's real prompt is checked with the tokenizer and shortened by the overflow while it
  does not fit (a merge across the cut).
- `overlap` None (the default, model.window_overlap unset) derives it from the room: half of it, at most
  `MAX_DERIVED_OVERLAP`. A run fixes one value for all its questions before any work (`run_overlap`, which
  also checks every question's windows, so that none fails mid-run) and writes it to its config.yaml.
- A window holds the gold answers that lie wholly inside it, offsets shifted; a window without any is a
  "no answer" window (training uses it as one when `train.negative_windows`; evaluation lets it abstain).

Hand-written: HF tokenizers window a tokenised text (`return_overflowing_tokens`, `stride`), but our
prompts are rendered text (templates, chat formats), so windows are cut in characters at token offsets and
rendered again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.encoding.tokens import Encoded, answer_ids, prompt_ids, target_ids
from jsquad_lora.errors import InputError

#: a window's passage tokens are a multiple of this: questions whose other prompt tokens differ by less
#: cut a document into the same windows (and share their prefixes); at most this many tokens stay unused
ROOM_STEP = 32
#: the derived overlap's ceiling: the fixed default of the releases before it was derived, so a prompt with room
#: for 256 passage tokens or more (every JSQuAD prompt at model.max_length=640) reads the same windows as then
MAX_DERIVED_OVERLAP = 128


def derived_overlap(room: int) -> int:
    """The overlap of windows holding `room` passage tokens when model.window_overlap is unset: half of them
    (an answer of up to that many tokens lies wholly inside some window), at most MAX_DERIVED_OVERLAP."""
    return min(MAX_DERIVED_OVERLAP, room // 2)


@dataclass(frozen=True)
class Window:
    """One window of a question's passage: the question with the window as its passage (`question`), where
    the window starts in the passage (characters), and its place among the question's windows."""

    question: Question
    start: int
    index: int
    count: int

    @property
    def answerable(self) -> bool:
        return bool(self.question.answers)


def _token_starts(tokenizer, text: str) -> list[int]:
    """The character where each token of `text` (tokenised alone, no special tokens) starts, increasing.
    Tokenizers without offsets (slow ones) get starts spread evenly: the fit check corrects the windows."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = [start for start, _ in encoded["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        starts = [len(text) * k // max(1, count) for k in range(count)]
    out, last = [], 0
    for start in starts:
        last = max(last, min(start, len(text)))
        out.append(last)
    return out


def _inside(question: Question, start: int, end: int) -> Question:
    """`question` with passage characters [start, end) and the gold answers wholly inside them."""
    kept = [
        (text, at - start)
        for text, at in zip(question.answers, question.answer_starts)
        if start <= at and at + len(text) <= end
    ]
    return dataclasses.replace(
        question,
        context=question.context[start:end],
        answers=tuple(t for t, _ in kept),
        answer_starts=tuple(s for _, s in kept),
    )


def passage_room(
    question: Question, render: Callable[[Question], str], tokenizer, budget: int, tokens: int | None = None
) -> int:
    """The passage tokens one window of `question` holds: the budget minus the prompt's other tokens, rounded
    down to a multiple of ROOM_STEP, at most `tokens` where given (see the module)."""
    bare = len(prompt_ids(tokenizer, render(_inside(question, 0, 0))))
    if bare >= budget:
        raise InputError(
            "model.max_length",
            f"question {question.id}: the prompt is {bare} tokens even with its passage removed, "
            f"more than the {budget} tokens it may take",
            fix="raise model.max_length, or lower eval.max_new_tokens or prompt.fewshot",
        )
    room = (budget - bare) // ROOM_STEP * ROOM_STEP or budget - bare
    return room if tokens is None else min(room, tokens)


def passage_windows(
    question: Question,
    render: Callable[[Question], str],
    tokenizer,
    budget: int,
    overlap: int | None,
    tokens: int | None = None,
) -> list[Window]:
    """The windows `question`'s prompt is read in, each prompt at most `budget` tokens and each window at most
    `tokens` passage tokens where given; `overlap` None: derived from the room (see the module)."""
    if len(prompt_ids(tokenizer, render(question))) <= budget:
        return [Window(question, 0, 0, 1)]
    room = passage_room(question, render, tokenizer, budget, tokens)
    if overlap is None:
        overlap = derived_overlap(room)
    if overlap >= room:
        raise InputError(
            "model.window_overlap",
            f"question {question.id}: windows overlap by {overlap} tokens, but one holds only {room} passage tokens "
            f"(the prompt may take {budget} tokens, {budget - room} or more of them not the passage)",
            fix=f"lower model.window_overlap below {room} (e.g. {room // 2}), or leave it unset (derived), or raise "
            "model.max_length (or model.window_tokens)",
        )
    context = question.context
    starts = _token_starts(tokenizer, context)
    n = len(starts)
    spans: list[tuple[int, int]] = []
    first = 0
    while True:
        last = min(first + room, n)
        begin = starts[first] if first else 0
        while True:
            end = starts[last] if last < n else len(context)
            over = len(prompt_ids(tokenizer, render(_inside(question, begin, end)))) - budget
            if over <= 0:
                break
            if last == first + 1:
                raise InputError(
                    "model.max_length",
                    f"question {question.id}: one passage token does not fit the prompt's {budget} tokens",
                    fix="raise model.max_length",
                )
            last = max(first + 1, last - over)  # a merge across the cut, or offsets spread evenly
        spans.append((begin, end))
        if end >= len(context):
            break
        first = max(first + 1, last - overlap)
    return [Window(_inside(question, b, e), b, k, len(spans)) for k, (b, e) in enumerate(spans)]


@dataclass
class TrainSet:
    """Training examples, each example's passage (its window: shared-prefix packing groups by it), and counts."""

    examples: list[Encoded]
    passages: list[str]
    windowed: int = 0  # questions whose passage was read in windows
    lost: int = 0  # windowed questions that gave no example: no window holds a gold answer wholly (answers longer
    # than the overlap, cut at every window edge), and no-answer windows not trained (train.negative_windows off)
    no_answer: int = 0  # examples that teach abstaining (a question without an answer, a window without one)


def fits_training(question: Question, render: Callable[[Question], str], tokenizer, max_length: int) -> bool:
    """Whether `question`'s prompt and its first answer (with the end token) fit `max_length`: one training
    example, the question unchanged; else training reads its passage in windows of `train_budget` tokens."""
    return len(prompt_ids(tokenizer, render(question))) + len(target_ids(tokenizer, question)) <= max_length


def train_budget(question: Question, tokenizer, max_length: int) -> int:
    """The tokens a training window's prompt may take: room is kept for the longest gold answer and the end token."""
    return max_length - max((len(answer_ids(tokenizer, a)) for a in question.answers), default=0) - 1


def run_overlap(
    train: Sequence[Question],
    evaluate: Sequence[Question],
    render: Callable[[Question], str],
    tokenizer,
    max_length: int,
    eval_budget: int,
    overlap: int | None,
    window_tokens: int | None = None,
) -> int:
    """The window overlap of a run, fixed before any work: `overlap` where set, else derived from the smallest
    room any of its questions' prompts leaves its passage. Every question's windows (training's and evaluation's)
    are cut with it here, so a value that cannot fit, or a prompt that cannot fit at all, fails now (InputError
    naming the question), never mid-run."""
    windowed = [q for q in train if not fits_training(q, render, tokenizer, max_length)]
    if overlap is None:
        # every evaluation question's room (what `ask` and `serve` will meet is alike), and the rooms of the
        # training questions that are read in windows (training keeps room for the answer instead)
        rooms = [passage_room(q, render, tokenizer, eval_budget, window_tokens) for q in evaluate]
        rooms += [passage_room(q, render, tokenizer, train_budget(q, tokenizer, max_length), window_tokens)
                  for q in windowed]  # fmt: skip
        overlap = derived_overlap(min(rooms, default=2 * MAX_DERIVED_OVERLAP))
    for q in evaluate:
        passage_windows(q, render, tokenizer, eval_budget, overlap, window_tokens)
    for q in windowed:
        passage_windows(q, render, tokenizer, train_budget(q, tokenizer, max_length), overlap, window_tokens)
    return overlap


def encode_train_windows(
    questions,
    render: Callable[[Question], str],
    tokenizer,
    max_length: int,
    overlap: int | None,
    negative_windows: bool,
    window_tokens: int | None = None,
) -> TrainSet:
    """One example per question whose prompt fits (exactly `encode_train_example`'s); for a longer passage, one
    per window holding a gold answer (its first), and with `negative_windows` one per window without an
    answer, teaching the model to abstain there. A question without any answer: every window abstains."""
    out = TrainSet([], [])
    for q in questions:
        ids, target = prompt_ids(tokenizer, render(q)), target_ids(tokenizer, q)
        if len(ids) + len(target) <= max_length:  # what encode_train_example gives a prompt that fits
            out.examples.append(Encoded(ids + target, [-100] * len(ids) + target))
            out.passages.append(q.context)
            out.no_answer += not q.answerable
            continue
        windows = passage_windows(q, render, tokenizer, train_budget(q, tokenizer, max_length), overlap, window_tokens)
        out.windowed += 1
        before = len(out.examples)
        for w in windows:
            if w.answerable or negative_windows or not q.answerable:
                ids = prompt_ids(tokenizer, render(w.question))
                target = target_ids(tokenizer, w.question)
                out.examples.append(Encoded(ids + target, [-100] * len(ids) + target))
                out.passages.append(w.question.context)
                out.no_answer += not w.answerable
        out.lost += len(out.examples) == before
    return out
