"""Questions written as SQuAD v1.1 JSON (JSQuAD's layout), and split into train / eval halves by document.

What `data convert` and `data split` write: any source this tool reads and validates becomes a file other
tools read. The layout is JSQuAD's: articles by title, paragraphs by context, each context written as
`<title> [SEP] <body>` with the answers' offsets shifted by that prefix, so that `jsquad.load_split` of the
written file gives back the same questions (ids, titles, contexts, questions, answers, offsets), in order.
A question without answers (its passage does not answer it: `data build-unanswerable`) is written as SQuAD
v2 writes one, `"answers": [], "is_impossible": true`; the others carry `"is_impossible": false`, as always.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from jsquad_lora.data.jsquad import TITLE_SEPARATOR
from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError, brief
from jsquad_lora.util.files import atomic_dir, holds_marker, out_of_space, write_json, write_text

SQUAD_VERSION = "v1.1"
#: what `data split` leaves in its output directory: a later split may replace that directory
SPLIT_MARKER = ".jsquad-lora-split"
SPLIT_FILES = ("train.json", "eval.json")


def full_context(question: Question) -> tuple[str, int]:
    """The context as written (`<title> [SEP] <body>`, or the body alone without a title) and the prefix length.

    A body without a title that holds " [SEP] " gets an empty title's prefix (" [SEP] "): read back, the
    prefix is what is cut off, not the body's start."""
    if question.title:
        prefix = question.title + TITLE_SEPARATOR
    elif TITLE_SEPARATOR in question.context:
        prefix = TITLE_SEPARATOR
    else:
        prefix = ""
    return prefix + question.context, len(prefix)


def _check(question: Question, seen: set[str], context: str, offset: int, source: object) -> None:
    """Refuse what the written file could not hold, or what would not read back as the same question."""
    where = f"question {brief(question.id)}"
    if not question.id.strip():
        raise InputError(source, "empty question id", where=where, fix="give every question a unique non-empty id")
    if question.id in seen:
        raise InputError(
            source, f"duplicate question id {brief(question.id)}", where=where, fix="question ids must be unique"
        )
    seen.add(question.id)
    if len(question.answers) != len(question.answer_starts):
        raise InputError(
            source,
            f"{len(question.answers)} answers but {len(question.answer_starts)} answer offsets",
            where=where,
            fix="give every answer its offset",
        )
    for k, start in enumerate(question.answer_starts):
        if not 0 <= start + offset < len(context):
            raise InputError(
                source,
                f"answer {k}'s offset {start} is outside its context (length {len(question.context)})",
                where=where,
                fix="answer offsets count characters from the start of the context",
            )


def squad_json(questions: Sequence[Question], *, source: object = "questions") -> dict[str, Any]:
    """SQuAD v1.1 JSON of `questions`: articles by title, paragraphs by context, both in first-seen order;
    `"is_impossible"` true for a question without answers (SQuAD v2's unanswerable questions).

    Every question is checked first (unique non-empty ids, offsets inside their contexts): an InputError
    names `source` and the question."""
    if not questions:
        raise InputError(source, "there are no questions to write", fix="pass a source with at least one question")
    articles: dict[str, dict[str, list[dict[str, Any]]]] = {}
    seen: set[str] = set()
    for question in questions:
        context, offset = full_context(question)
        _check(question, seen, context, offset, source)
        qa = {
            "id": question.id,
            "question": question.question,
            "answers": [
                {"text": text, "answer_start": start + offset}
                for text, start in zip(question.answers, question.answer_starts)
            ],
            "is_impossible": not question.answers,
        }
        articles.setdefault(question.title, {}).setdefault(context, []).append(qa)
    return {
        "version": SQUAD_VERSION,
        "data": [
            {"title": title, "paragraphs": [{"context": context, "qas": qas} for context, qas in paragraphs.items()]}
            for title, paragraphs in articles.items()
        ],
    }


def check_output_file(path: Path | str) -> None:
    """An output file may be new or replace a file; a directory (or anything else) is refused."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory, not a file", fix="pass --output a file name, e.g. out.json")
    if path.exists() and not path.is_file():
        raise InputError(path, "exists and is not a regular file", fix="pass --output a new file name")


def write_squad_json(path: Path | str, questions: Sequence[Question], *, source: object = "questions") -> Path:
    """Write `questions` as SQuAD v1.1 JSON to `path`, atomically, after checking them all.

    An existing `path` is replaced only if it is a file (a directory is refused)."""
    path = Path(path)
    check_output_file(path)
    data = squad_json(questions, source=source)
    with out_of_space("the SQuAD JSON file", path, fix="free space there, or pass an --output on another disk"):
        return write_json(path, data)


def document_of(question: Question) -> str:
    """The document a question belongs to: its title, or its context where it has no title."""
    return question.title or question.context


def _fill(documents: list[str], sizes: dict[str, int], target: float) -> set[str]:
    """Documents (of two or more) whose sizes add up to about `target` (less than half the total): in the
    given order, each one that still fits; then the one left out that brings the sum nearest `target`, if
    it brings it nearer. At least one document, and never all of them."""
    chosen: set[str] = set()
    taken = 0
    for key in documents:
        if taken + sizes[key] <= target:
            chosen.add(key)
            taken += sizes[key]
    rest = [key for key in documents if key not in chosen]  # never empty: `target` is less than the total
    best = min(rest, key=lambda key: abs(taken + sizes[key] - target))  # ties: the first in the given order
    if not chosen or (len(rest) > 1 and abs(taken + sizes[best] - target) < target - taken):
        chosen.add(best)
    return chosen


def split_by_document(
    questions: Sequence[Question], eval_fraction: float, seed: int, *, source: object = "questions"
) -> tuple[list[Question], list[Question]]:
    """(train, eval): whole documents on each side, about `eval_fraction` of the questions in eval.

    The documents are shuffled with `seed`; the smaller side takes them in that order while they fit in its
    share, then the one left out that brings its count nearest its share (if nearer); the other documents
    make the larger side. Both sides get at least one document. Each side keeps the source's order; the same
    (questions, eval_fraction, seed) always give the same halves."""
    if not 0 < eval_fraction < 1:
        raise InputError("--eval-fraction", f"{eval_fraction} is not between 0 and 1", fix="e.g. --eval-fraction 0.1")
    sizes: dict[str, int] = {}
    for question in questions:
        key = document_of(question)
        sizes[key] = sizes.get(key, 0) + 1
    if len(sizes) < 2:
        raise InputError(
            source,
            f"it holds {len(sizes)} document{'' if len(sizes) == 1 else 's'}: a split by document needs at least two",
            fix="split a source with several documents (titles), or split it another way",
        )
    documents = list(sizes)
    random.Random(seed).shuffle(documents)
    # the smaller side is filled (a large document that does not fit it goes to the larger side)
    chosen = _fill(documents, sizes, min(eval_fraction, 1 - eval_fraction) * len(questions))
    held_out = chosen if eval_fraction <= 0.5 else set(documents) - chosen
    train = [q for q in questions if document_of(q) not in held_out]
    evaluation = [q for q in questions if document_of(q) in held_out]
    return train, evaluation


def check_split_dir(output: Path | str) -> None:
    """OUTPUT new, empty, or an earlier split of this tool; anything else is an InputError, nothing touched."""
    fix = "pass --output a new or empty directory (or one an earlier `jsquad-lora data split` wrote)"
    holds_marker(Path(output), SPLIT_MARKER, what="a split of jsquad-lora", fix=fix)


def write_split(
    output: Path | str,
    questions: Sequence[Question],
    eval_fraction: float,
    seed: int,
    *,
    source: object = "questions",
) -> tuple[Path, Path, list[Question], list[Question]]:
    """Split `questions` by document into OUTPUT/train.json and OUTPUT/eval.json, written as one directory.

    OUTPUT must be new, empty, or an earlier split of this tool (it holds SPLIT_MARKER); anything else is
    refused untouched. Returns (train path, eval path, train questions, eval questions)."""
    output = Path(output)
    check_split_dir(output)
    train, evaluation = split_by_document(questions, eval_fraction, seed, source=source)
    train_data, eval_data = squad_json(train, source=source), squad_json(evaluation, source=source)
    with (
        out_of_space("the split", output, fix="free space there, or pass an --output on another disk"),
        atomic_dir(output) as tmp,
    ):
        write_json(tmp / SPLIT_FILES[0], train_data)
        write_json(tmp / SPLIT_FILES[1], eval_data)
        write_text(
            tmp / SPLIT_MARKER,
            f"split by jsquad-lora from {source} (by document, eval fraction {eval_fraction}, seed {seed})\n",
        )
    return output / SPLIT_FILES[0], output / SPLIT_FILES[1], train, evaluation
