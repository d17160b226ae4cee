"""Fixed random samples of a split, stratified by article and drawn as whole passages, and the standard
error of a score measured on such a sample; the evaluated ids of a run (`eval_ids.json`)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError, brief
from jsquad_lora.util.jsonio import read_json_file


def stratified_sample(questions: Sequence[Question], size: int, seed: int) -> list[Question]:
    """A fixed random sample of at least `size` questions, stratified by article (title) and drawn
    as whole passages: each article gets its share of `size`, filled with its passages in a
    seeded random order, all questions of a passage together (the passage's prompt prefix is then
    computed once for its questions, in training and in evaluation). Returned in data order;
    the same (questions, size, seed) always give the same sample."""
    if size >= len(questions):
        return list(questions)
    articles: dict[str, dict[str, list[int]]] = {}
    for i, q in enumerate(questions):
        articles.setdefault(q.title, {}).setdefault(q.context, []).append(i)
    rng = random.Random(seed)
    chosen: list[int] = []
    left: list[list[int]] = []
    for title in sorted(articles):
        passages = list(articles[title].values())
        quota = size * sum(map(len, passages)) / len(questions)
        rng.shuffle(passages)
        taken = 0
        for k, members in enumerate(passages):
            if taken + len(members) / 2 > quota:  # a passage joins when it brings the count nearer its share
                left += passages[k:]
                break
            chosen += members
            taken += len(members)
    rng.shuffle(left)
    while len(chosen) < size:  # top up to at least `size` with passages from any article
        chosen += left.pop()
    return [questions[i] for i in sorted(chosen)]


def sample_standard_error(values: Sequence[float], clusters: Sequence[str], population: int) -> float:
    """Standard error (units of `values`) of the mean of a sample drawn as whole clusters
    (passages): the ratio estimator's, with the finite-population correction; 0 for the whole
    population. Questions of one passage are correlated, so this is wider than sqrt(p(1-p)/n)."""
    n = len(values)
    if n < 2 or n >= population:
        return 0.0
    mean = sum(values) / n
    residual: dict[str, float] = {}
    for value, cluster in zip(values, clusters):
        residual[cluster] = residual.get(cluster, 0.0) + value - mean
    k = len(residual)
    if k < 2:
        return 0.0
    variance = (1 - n / population) * k / (k - 1) * sum(r * r for r in residual.values()) / n**2
    return variance**0.5


def select_ids(
    questions: Sequence[Question],
    ids_file: Path | str,
    *,
    purpose: str = "score",
    fix: str = "pass the data file the run evaluated (its eval split)",
) -> list[Question]:
    """The questions whose ids a JSON list file names (a run's eval_ids.json), in data order. `purpose` and `fix`
    word the errors for the caller (`score --ids`, `data.eval_ids`)."""
    ids = read_json_file(Path(ids_file), "ids file")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InputError(ids_file, "expected a JSON list of question ids (strings)", fix="pass a run's eval_ids.json")
    if not ids:
        raise InputError(
            ids_file, f"the list of ids is empty: there is nothing to {purpose}", fix="pass a run's eval_ids.json"
        )
    known = {q.id for q in questions}
    if missing := [i for i in ids if i not in known]:
        raise InputError(
            ids_file,
            f"{len(missing)} of its {len(ids)} ids are not in the data file (first: {brief(missing[0])})",
            fix=fix,
        )
    wanted = set(ids)
    return [q for q in questions if q.id in wanted]
