"""Paired comparisons of two evaluations on the same questions: ΔEM with a bootstrap confidence interval that
resamples passages (as the sample's standard error treats them: questions of one passage are not independent),
and McNemar's exact test on the questions whose exact match flips.

A question's passage comes from its predictions row (`passage`, written by every evaluation since rows held it),
else from the evaluation data where the report finds it again (`passages_of`). Where neither says, the question
is its own cluster: the comparison says so (`unknown_passages`), since that interval is too narrow.

Hand-written (a few lines of arithmetic): scipy is not a dependency, and no library resamples by passage.
"""

from __future__ import annotations

import math
import random
from typing import Any, Iterable, Mapping, Sequence

from jsquad_lora.evaluate.predictions import passage_key

#: bootstrap resamples of the passages: the interval's ends move by < 0.1 points between seeds at this many
RESAMPLES = 2000


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the flips are Binomial(only_a + only_b, 1/2) under "no difference"."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(
    em_a: Mapping[str, float],
    em_b: Mapping[str, float],
    passage_of: Mapping[str, str] | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict | None:
    """B against A on the question ids both scored (em: 0/1 per id, or 0..100): EM of each, ΔEM = B − A in
    points, its 95% percentile interval over `resamples` draws of whole passages (`passage_of`: id → passage;
    each question its own passage where None or unknown: `unknown_passages` counts those, and `passages` the
    clusters), the questions right only in A / only in B, and McNemar's p. None where the two share no
    question."""
    ids = [i for i in em_a if i in em_b]
    if not ids:
        return None
    right_a = {i: float(em_a[i]) > 0 for i in ids}
    right_b = {i: float(em_b[i]) > 0 for i in ids}
    clusters: dict[Any, list[int]] = {}
    unknown = 0
    for i in ids:
        passage = (passage_of or {}).get(i)
        unknown += passage is None
        key = ("passage", passage) if passage is not None else ("question", i)  # an id never stands for a passage
        total = clusters.setdefault(key, [0, 0])
        total[0] += int(right_b[i]) - int(right_a[i])
        total[1] += 1
    sums = list(clusters.values())
    rng = random.Random(seed)
    deltas = []
    for _ in range(resamples):
        drawn = [sums[rng.randrange(len(sums))] for _ in sums]
        deltas.append(100.0 * sum(d for d, _ in drawn) / sum(n for _, n in drawn))
    deltas.sort()
    only_a = sum(right_a[i] and not right_b[i] for i in ids)
    only_b = sum(right_b[i] and not right_a[i] for i in ids)
    em_a_value = 100.0 * sum(right_a.values()) / len(ids)
    em_b_value = 100.0 * sum(right_b.values()) / len(ids)
    return {
        "questions": len(ids),
        "passages": len(sums),
        "unknown_passages": unknown,
        "em_a": em_a_value,
        "em_b": em_b_value,
        "delta": em_b_value - em_a_value,
        "ci95": [deltas[int(0.025 * resamples)], deltas[min(resamples - 1, int(0.975 * resamples))]],
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": mcnemar_p(only_a, only_b),
    }


def em_by_id(rows: Sequence[dict]) -> dict[str, float]:
    """A predictions file's rows as {id: em} (rows without a numeric em are left out)."""
    out = {}
    for row in rows:
        em = row.get("em")
        if isinstance(row.get("id"), str) and isinstance(em, (int, float)) and not isinstance(em, bool):
            out[row["id"]] = float(em)
    return out


def passages_of(rows: Iterable[Sequence[dict]], contexts: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each question id's passage key: its predictions rows' `passage` (the first that has one), else
    `passage_key` of its passage in `contexts` (id → passage text, from the data); ids neither knows are left
    out."""
    found = {qid: passage_key(text) for qid, text in (contexts or {}).items() if isinstance(text, str)}
    recorded: dict[str, str] = {}
    for file_rows in rows:
        for row in file_rows:
            qid, passage = row.get("id"), row.get("passage")
            if isinstance(qid, str) and isinstance(passage, str) and passage:
                recorded.setdefault(qid, passage)
    return found | recorded
