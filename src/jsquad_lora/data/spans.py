"""Where an answer text sits in its passage: the one rule every reader of answers without offsets follows.

Own data's simple rows (`rows.py`) and generated questions (`qa_checks.py`) both give an answer as text only
(a generator's offsets are never trusted), so both find it here: the first occurrence, or, given a hint (an
offset the text was expected near), the occurrence nearest to it.
"""

from __future__ import annotations


def find_answer(context: str, answer: str, hint: int | None = None) -> tuple[int, bool]:
    """(start, repeated): the character offset of `answer` in `context` (-1: it does not occur) and whether
    it occurs more than once (overlapping occurrences count). Without `hint` the first occurrence; with
    one the occurrence whose start is nearest to `hint` (the earlier of two as near)."""
    start = context.find(answer)
    if start < 0:
        return -1, False
    following = context.find(answer, start + 1)
    if following < 0 or hint is None:
        return start, following >= 0
    best = start
    while following >= 0:
        if abs(following - hint) < abs(best - hint):
            best = following
        following = context.find(answer, following + 1)
    return best, True
