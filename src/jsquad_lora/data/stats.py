"""Counts and length percentiles of a split (`jsquad-lora stats`)."""

from __future__ import annotations

import statistics
from typing import Any

from jsquad_lora.data.question import Split


def _percentiles(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    return {
        "min": ordered[0],
        "p50": cuts[49],
        "p90": cuts[89],
        "p99": cuts[98],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 2),
    }


def split_stats(split: Split) -> dict[str, Any]:
    """Counts and character-length percentiles of a split (answers: the first gold answer)."""
    qs = split.questions
    return {
        "file": str(split.path),
        "questions": len(qs),
        "paragraphs": len({(q.title, q.context) for q in qs}),
        # a question without a document (a row without title / document column) is its passage's own
        "articles": len({q.title or ("passage", q.context) for q in qs}),
        "gold_answers": sum(len(q.answers) for q in qs),
        "unanswerable": sum(not q.answers for q in qs),
        "context_chars": _percentiles([len(q.context) for q in qs]),
        "question_chars": _percentiles([len(q.question) for q in qs]),
        # of the questions with an answer (None where none has one)
        "answer_chars": _percentiles(lengths) if (lengths := [len(q.answers[0]) for q in qs if q.answers]) else None,
        "answer_start_mismatches": len(split.start_mismatches),
        "answer_start_mismatch_examples": list(split.start_mismatches[:10]),
        # rows given without answer_start whose answer occurs several times in the context (the first is taken)
        "ambiguous_answers": len(split.ambiguous_answers),
        "ambiguous_answer_examples": list(split.ambiguous_answers[:10]),
    }
