"""Evaluation sets derived from a source's questions: long documents, and questions their passage cannot answer.

`data build-long` (`long_documents`): an article's consecutive passages (in file order) joined with one
newline into documents of 2,000–6,000 body characters (`Question.context`, without the `<title> [SEP] `
prefix). Per document a target length is drawn uniformly from [2,000, 6,000] with
`random.Random(f"{seed}:{article}")`; passages are added while the document stays within 6,000 characters,
until it reaches its target. A piece that ends shorter than 2,000 characters (an article's remainder, or the
passages before one too long to join them) is joined to the previous document of its article when the sum
stays within 6,000 characters, else its questions are dropped (an article shorter than 2,000 characters in
all is dropped whole). A single passage longer than 6,000 characters is a document of its own. Every kept
question keeps its id, question and gold answers; each offset moves by its passage's offset in the document
(an offset that did not point at its text in the source is moved the same way, still wrong); an offset
into the `<title> [SEP] ` prefix (an answer that is the title) stays, as every document keeps its title.

`data build-unanswerable` (`unanswerable_mix`): each question kept as it is, and asked once more, as
`<id>#noans` without answers, of another passage of its article that contains none of its gold answer texts,
drawn with `random.Random(f"{seed}:{id}")` from those passages in file order. A question whose article has
no such passage is dropped with its negative, so the mix stays 1:1. Each passage's own questions come
first, then the negatives asked of it.

An article is a title (a question without one is an article of its own passage); passages are contexts, both
in first-seen order. Questions without an answer in the source are dropped by both (a longer document could
answer them; a negative of a negative is no test). The same (questions, seed) always give the same result.
Hand-written: no library builds these sets from SQuAD-style questions.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, replace
from typing import Any, Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.data.write import document_of, full_context
from jsquad_lora.errors import InputError

#: a document's body characters: at least this many ...
MIN_CHARS = 2000
#: ... and at most this many (unless one passage alone is longer)
MAX_CHARS = 6000
#: between two passages of a document
PASSAGE_SEPARATOR = "\n"
#: appended to a question's id for its unanswerable twin
NO_ANSWER_SUFFIX = "#noans"

#: why build-long drops a question (the summary counts each)
SHORT_ARTICLE = "in articles under 2000 characters"
SHORT_REMAINDER = "in leftovers under 2000 characters that no document of their article could take"
#: why both drop a question
NO_ANSWER = "without an answer in the source"
#: why build-unanswerable drops a question
NO_OTHER_PASSAGE = "whose article has no other passage without their answers"


@dataclass(frozen=True)
class Passage:
    """One context of an article, with its questions in source order."""

    context: str
    questions: tuple[Question, ...]


def articles_of(questions: Sequence[Question]) -> dict[str, list[Passage]]:
    """The questions by article (title, else the passage alone) and by passage, both in first-seen order."""
    grouped: dict[str, dict[str, list[Question]]] = {}
    for question in questions:
        grouped.setdefault(document_of(question), {}).setdefault(question.context, []).append(question)
    return {
        article: [Passage(context, tuple(qs)) for context, qs in passages.items()]
        for article, passages in grouped.items()
    }


def _answerable_only(questions: Sequence[Question], dropped: dict[str, int]) -> list[Question]:
    """The questions with gold answers; the others are counted as dropped."""
    kept = [q for q in questions if q.answerable]
    if len(kept) < len(questions):
        dropped[NO_ANSWER] = len(questions) - len(kept)
    return kept


# --- long documents ---------------------------------------------------------------------------------------


def _joined_length(passages: Sequence[Passage]) -> int:
    return sum(len(p.context) for p in passages) + len(PASSAGE_SEPARATOR) * max(len(passages) - 1, 0)


def _pieces(passages: Sequence[Passage], rng: random.Random) -> list[list[Passage]]:
    """An article's passages cut into runs of consecutive passages: each run ends when it reaches its drawn
    target, or when the next passage would take it over MAX_CHARS. A run may still be short (`_settle`)."""
    pieces: list[list[Passage]] = []
    current: list[Passage] = []
    target = rng.randint(MIN_CHARS, MAX_CHARS)
    for passage in passages:
        if current and _joined_length([*current, passage]) > MAX_CHARS:
            pieces.append(current)
            current, target = [], rng.randint(MIN_CHARS, MAX_CHARS)
        current.append(passage)
        # a passage over MAX_CHARS alone ends its run here too: it is a document of its own
        if _joined_length(current) >= target:
            pieces.append(current)
            current, target = [], rng.randint(MIN_CHARS, MAX_CHARS)
    if current:
        pieces.append(current)
    return pieces


def _settle(pieces: list[list[Passage]], dropped: dict[str, int]) -> list[list[Passage]]:
    """The runs as documents: a run under MIN_CHARS joins the document before it (of the same article, so
    still consecutive passages) when the sum fits MAX_CHARS; otherwise its questions are dropped."""
    documents: list[list[Passage]] = []
    for piece in pieces:
        if _joined_length(piece) >= MIN_CHARS:
            documents.append(piece)
        elif documents and _joined_length(documents[-1] + piece) <= MAX_CHARS:
            documents[-1] = documents[-1] + piece
        else:
            reason = SHORT_ARTICLE if len(pieces) == 1 else SHORT_REMAINDER
            dropped[reason] = dropped.get(reason, 0) + sum(len(p.questions) for p in piece)
    return documents


def _points_at(question: Question, text: str, start: int) -> bool:
    """Whether `start` points at `text` in the context as written (`<title> [SEP] <body>`): what a reader of
    the file checks, and what `Split.start_mismatches` records when it does not."""
    context, prefix = full_context(question)
    return 0 <= start + prefix and context[start + prefix : start + prefix + len(text)] == text


def _moved(question: Question, document: str, shift: int) -> Question:
    """`question` asked of `document`, in which its passage starts at `shift`: the offsets into its passage
    moved by `shift`. A negative offset points into the `<title> [SEP] ` prefix (JSQuAD has answers that
    are the title, pointing at it there): the document keeps its article's title, so it stays."""
    starts = tuple(start + shift if start >= 0 else start for start in question.answer_starts)
    moved = replace(question, context=document, answer_starts=starts)
    for text, old, new in zip(question.answers, question.answer_starts, starts):
        # a bug here, never the user's: an offset that was right in its passage must stay right
        if _points_at(question, text, old) and not _points_at(moved, text, new):
            raise AssertionError(f"{question.id}: answer {text!r} moved from {old} to {new} misses its text")
    return moved


def _document_questions(passages: Sequence[Passage]) -> list[Question]:
    document = PASSAGE_SEPARATOR.join(p.context for p in passages)
    questions: list[Question] = []
    shift = 0
    for passage in passages:
        questions.extend(_moved(q, document, shift) for q in passage.questions)
        shift += len(passage.context) + len(PASSAGE_SEPARATOR)
    return questions


def long_documents(
    questions: Sequence[Question], seed: int, *, source: object = "questions"
) -> tuple[list[Question], dict[str, Any]]:
    """The questions asked of long documents (the module's rules), and a summary: documents, questions,
    dropped (a count per reason), chars (min / median / max of the documents' lengths), start_mismatches
    (answers whose offset was wrong in the source, moved as they were)."""
    dropped: dict[str, int] = {}
    kept: list[Question] = []
    lengths: list[int] = []
    for article, passages in articles_of(_answerable_only(questions, dropped)).items():
        rng = random.Random(f"{seed}:{article}")
        for document in _settle(_pieces(passages, rng), dropped):
            lengths.append(_joined_length(document))
            kept.extend(_document_questions(document))
    if not kept:
        raise InputError(
            source,
            f"no document of {MIN_CHARS}–{MAX_CHARS} characters could be built: no article's passages add up "
            f"to {MIN_CHARS} characters",
            fix="pass a source whose articles (titles) hold several passages, or longer ones",
        )
    mismatches = sum(not _points_at(q, text, start) for q in kept for text, start in zip(q.answers, q.answer_starts))
    summary = {
        "documents": len(lengths),
        "questions": len(kept),
        "dropped": dropped,
        "chars": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "start_mismatches": mismatches,
    }
    return kept, summary


# --- unanswerable questions -------------------------------------------------------------------------------


def _other_passage(question: Question, passages: Sequence[Passage], seed: int) -> str | None:
    """A passage of the question's article, not its own, holding none of its gold answers (drawn with the
    seed and the question's id); None where there is none."""
    candidates = [
        p.context
        for p in passages
        if p.context != question.context and not any(answer in p.context for answer in question.answers)
    ]
    return random.Random(f"{seed}:{question.id}").choice(candidates) if candidates else None


def unanswerable_mix(
    questions: Sequence[Question], seed: int, *, source: object = "questions"
) -> tuple[list[Question], dict[str, Any]]:
    """Each question and its `#noans` twin asked of another passage (the module's rules), by article, then
    passage (its own questions, then the negatives asked of it); and a summary: answerable, unanswerable,
    dropped (a count per reason)."""
    dropped: dict[str, int] = {}
    articles = articles_of(_answerable_only(questions, dropped))
    output: list[Question] = []
    for article, passages in articles.items():
        negatives: dict[str, list[Question]] = {p.context: [] for p in passages}
        kept: dict[str, list[Question]] = {p.context: [] for p in passages}
        for passage in passages:
            for question in passage.questions:
                other = _other_passage(question, passages, seed)
                if other is None:
                    dropped[NO_OTHER_PASSAGE] = dropped.get(NO_OTHER_PASSAGE, 0) + 1
                    continue
                kept[passage.context].append(question)
                negatives[other].append(
                    replace(question, id=question.id + NO_ANSWER_SUFFIX, context=other, answers=(), answer_starts=())
                )
        for passage in passages:
            output.extend(kept[passage.context])
            output.extend(negatives[passage.context])
    unanswerable = sum(not q.answerable for q in output)
    if not output:
        raise InputError(
            source,
            "no question could be asked of another passage: no article holds a passage without a question's answers",
            fix="pass a source whose articles (titles) hold several passages",
        )
    summary = {"answerable": len(output) - unanswerable, "unanswerable": unanswerable, "dropped": dropped}
    return output, summary
