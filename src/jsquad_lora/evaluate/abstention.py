"""The abstention threshold (`eval.abstain_threshold`) tuned on held-out training questions, never on the
evaluation set (`train.abstain_holdout`).

Every window of every held-out question is answered twice: with abstaining allowed (threshold 0), which gives
each window's abstention margin, and with abstaining forbidden, which gives the answer (and score) the window
gives under any threshold its margin does not exceed. So the question's prediction under every threshold t
is known without generating again: the windows whose margin is at most t answer, the best-scored wins, and
the question abstains where no window answers (`generate.decoding.best_window`). The threshold kept is the
one with the best jglue EM over the held-out questions (of equals, the one nearest 0). Scores under the
forbidding pass are normalised without the end tokens at the first step: the window chosen among several
can differ slightly from a generation at that threshold.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.encoding.windows import passage_windows
from jsquad_lora.evaluate.scorers import PRIMARY_SCORER, SCORERS, no_answer_score
from jsquad_lora.generate.decoding import DecodingConfig, ScoredAnswer, best_window


def _em(question: Question, prediction: str) -> float:
    if not question.answers:
        return no_answer_score(prediction)[0]
    return SCORERS[PRIMARY_SCORER].question(prediction, question.answers)[0]


def predictions_at(
    threshold: float, per_question: Sequence[tuple[Question, list[float | None], list[ScoredAnswer]]]
) -> list[str]:
    """Each question's prediction at `threshold`, from its windows' margins and never-abstaining answers."""
    out = []
    for _, margins, answers in per_question:
        spoken = [a if m is None or m <= threshold else ScoredAnswer("", a.score) for m, a in zip(margins, answers)]
        k = best_window(spoken)
        out.append("" if k is None else spoken[k].text)
    return out


def tune_threshold(
    model,
    tokenizer,
    questions: Sequence[Question],
    render: Callable[[Question], str],
    decoding: DecodingConfig,
    max_length: int,
    overlap: int,
    window_tokens: int | None = None,
) -> dict:
    """The threshold with the best EM on `questions`, and what it was measured on (metrics.json's `abstention`)."""
    from jsquad_lora.generate.greedy import generate_scored

    budget = max_length - decoding.max_new_tokens
    windows = [passage_windows(q, render, tokenizer, budget, overlap, window_tokens) for q in questions]
    flat = [w for ws in windows for w in ws]
    prompts, passages = [render(w.question) for w in flat], [w.question.context for w in flat]
    allowed = dataclasses.replace(decoding, abstain=True, abstain_threshold=0.0)
    margins = [a.abstain_margin for a in generate_scored(model, tokenizer, prompts, passages, allowed)]
    forbidden = dataclasses.replace(decoding, abstain=False, abstain_threshold=0.0)
    answers = generate_scored(model, tokenizer, prompts, passages, forbidden)
    per_question, at = [], 0
    for q, ws in zip(questions, windows):
        per_question.append((q, margins[at : at + len(ws)], answers[at : at + len(ws)]))
        at += len(ws)
    known = [m for m in margins if m is not None]
    candidates = sorted({0.0, *known, *([min(known) - 1.0] if known else [])})
    # a threshold between two margins behaves as the lower one: the margins themselves are every distinct case
    results = []
    for t in candidates:
        em = sum(_em(q, p) for (q, _, _), p in zip(per_question, predictions_at(t, per_question)))
        results.append((100.0 * em / len(questions), -abs(t), t))
    best_em, _, best = max(results)
    at_zero = next(em for em, _, t in results if t == 0.0)
    return {
        "threshold": best,
        "held_out_questions": len(questions),
        "held_out_unanswerable": sum(not q.answers for q in questions),
        "em_at_threshold": best_em,
        "em_at_zero": at_zero,
    }
