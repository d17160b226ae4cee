"""Checks on generated question/answer pairs, and on DOCS passages that would leak evaluation passages.

A generator's answer is text only: its offset is found here in the passage (`locate_answer`), never taken
from the generator. A pair is kept when the answer is a span of the passage, the question does not hold the
answer, is no near-duplicate of a question already kept on the passage, and is not a copy of passage text.
Text is compared after NFKC (full- and half-width alike) with whitespace removed. Hand-written: the checks
are a few lines each, and their thresholds are this tool's choices (named below with why).
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

from jsquad_lora.data.documents import Passage
from jsquad_lora.data.question import Question
from jsquad_lora.data.spans import find_answer

#: why a pair is dropped, in the order a pair meets them (the summary lists every one, zeros included):
#: endpoint_refused (the endpoint refused the passage's request: 400, 413 or 422, e.g. too long for it),
#: not_json (the generator's reply is not the JSON asked for) and round_trip (a QA run does not find the answer)
#: are counted by the callers
REJECT_REASONS = (
    "endpoint_refused",
    "not_json",
    "empty",
    "answer_not_in_passage",
    "question_contains_answer",
    "near_duplicate",
    "copies_passage",
    "round_trip",
)
#: a question whose character-bigram Jaccard similarity with one kept on the same passage exceeds this asks
#: the same thing in other words. Of JSQuAD dev's pairs of human questions on one passage, 3 % exceed 0.8
NEAR_DUPLICATE = 0.8
#: a question whose longest common substring with its passage exceeds this share of its length copies the
#: passage (a sentence or a fragment, with at most a character of its own). JSQuAD's human questions often
#: are a passage sentence with its answer swapped for "…は?": 18 % of dev's exceed 0.8 and 2.8 % exceed 0.95
#: (mostly fragments copied whole), so the cap sits at 0.95
COPY_CAP = 0.95
#: the shortest text (normalised characters) whose containment counts as a leak, either way: a short line (a
#: heading, a name) occurs in many texts without leaking any of them
LEAK_MIN_CHARS = 30
#: the length of the character shingles that index evaluation passages for the leak search (at most
#: LEAK_MIN_CHARS, so that every text compared has one)
SHINGLE = 16


def normalized(text: str) -> str:
    """`text` as the checks compare it: NFKC, lower case, every whitespace character removed."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def locate_answer(passage: str, answer: str, hint: int | None = None) -> int | None:
    """The character offset of `answer` (its surrounding whitespace removed) in `passage`, or None when it
    is not a span of it. Several occurrences: as own data is read (`spans.find_answer`), the first; with a
    `hint` (the candidate's or the generator's offset, never trusted as such) the one nearest to it."""
    answer = answer.strip()
    if not answer:
        return None
    start, _ = find_answer(passage, answer, hint)
    return start if start >= 0 else None


def check_pair(
    passage: str, question: str, answer: str, hint: int | None, earlier_questions: Sequence[str]
) -> tuple[int | None, str | None]:
    """(answer_start, None) for a pair kept, (None, reason) for one rejected (a REJECT_REASONS name).
    `earlier_questions`: the questions already kept on this passage."""
    if not question.strip() or not answer.strip():
        return None, "empty"
    start = locate_answer(passage, answer, hint)
    if start is None:
        return None, "answer_not_in_passage"
    q = normalized(question)
    if normalized(answer) in q:
        return None, "question_contains_answer"
    grams = _bigrams(q)
    if any(_jaccard(grams, _bigrams(normalized(e))) > NEAR_DUPLICATE for e in earlier_questions):
        return None, "near_duplicate"
    if longest_common_substring(q, normalized(passage)) > COPY_CAP * len(q):
        return None, "copies_passage"
    return start, None


def _bigrams(text: str) -> set[str]:
    return {text[i : i + 2] for i in range(len(text) - 1)} or {text}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def longest_common_substring(short: str, long: str) -> int:
    """The length of the longest substring of `short` that occurs in `long`: each start of `short` tries to
    beat the best so far by one character (`in` searches `long` at C speed; O(len(short)) searches)."""
    best = 0
    for i in range(len(short)):
        while i + best < len(short) and short[i : i + best + 1] in long:
            best += 1
    return best


def eval_passage_leaks(
    passages: Sequence[Passage], eval_questions: Sequence[Question], limit: int | None = 5
) -> list[tuple[Passage, str]]:
    """(DOCS passage, evaluation question id) for each DOCS passage that holds the text of an evaluation
    passage, or whose text an evaluation passage holds, compared `normalized`, the contained text at least
    LEAK_MIN_CHARS long; the id is the first question asked of that evaluation passage. In DOCS order, at most
    `limit` (None: all).

    Evaluation passages are indexed by their character shingles, so each DOCS passage is compared in full
    (`in`) only with the few evaluation passages that share a shingle with it."""
    first_id: dict[str, str] = {}
    for q in eval_questions:
        first_id.setdefault(normalized(q.context), q.id)
    texts = [t for t in first_id if len(t) >= LEAK_MIN_CHARS]
    by_head: dict[str, list[str]] = {}  # an evaluation passage's first shingle → the passages
    every: dict[str, list[int]] = {}  # any shingle → the evaluation passages holding it (by index)
    for k, text in enumerate(texts):
        by_head.setdefault(text[:SHINGLE], []).append(text)
        for i in range(len(text) - SHINGLE + 1):
            holders = every.setdefault(text[i : i + SHINGLE], [])
            if not holders or holders[-1] != k:
                holders.append(k)
    found: list[tuple[Passage, str]] = []
    for passage in passages:
        if limit is not None and len(found) >= limit:
            break
        text = normalized(passage.text)
        if len(text) < LEAK_MIN_CHARS:
            continue
        # an evaluation passage inside this one starts at one of this one's shingles
        heads = (text[i : i + SHINGLE] for i in range(len(text) - SHINGLE + 1))
        hit = next((e for head in heads for e in by_head.get(head, ()) if e in text), None)
        if hit is None:  # this one inside an evaluation passage: that one holds this one's first shingle
            hit = next((texts[k] for k in every.get(text[:SHINGLE], ()) if text in texts[k]), None)
        if hit is not None:
            found.append((passage, first_id[hit]))
    return found
