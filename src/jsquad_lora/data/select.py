"""A run's questions: the training and evaluation splits of `data:`, sampled and cut as the config says.

The samples (`data.train_sample`, `data.eval_sample`) are seeded, stratified by article and drawn as whole
passages (`sampling.py`); where training runs in float32 on a CPU, `data.train_sample_cpu_float32` keeps
the same time budget. The `*_limit` cuts come last (smoke tests).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from typing import Sequence

from jsquad_lora.config.schema import RunConfig
from jsquad_lora.data.formats import read_split
from jsquad_lora.data.question import Question
from jsquad_lora.data.sampling import select_ids, stratified_sample

log = logging.getLogger(__name__)


class TrainQuestions(list):
    """A run's training questions (a list of Question), with `sources`: one count per training source,
    {"source", "limit", "weight", "read" (questions in the source), "mixed" (after its limit and weight),
    "questions" (in the training set, after data.train_sample and data.train_limit)}."""

    def __init__(self, questions=(), sources: list[dict] | None = None):
        super().__init__(questions)
        self.sources = sources or []


def load_questions(cfg: RunConfig) -> tuple[list[Question], list[Question]]:
    """Training and evaluation questions: all of each split, or its seeded stratified sample
    (`data.train_sample` / `data.eval_sample`), then the first `*_limit` (smoke tests)."""
    train, valid, _ = run_questions(cfg)
    return train, valid


def run_questions(cfg: RunConfig) -> tuple[TrainQuestions, list[Question], int]:
    """`load_questions`, and the size of the evaluation split the sample was drawn from. The training questions
    carry each training source's count (`TrainQuestions.sources`)."""
    train, sources, origin = train_mix(cfg)
    valid = read_data(cfg, "eval").questions
    if cfg.data.eval_ids:
        valid = select_ids(
            valid,
            cfg.data.eval_ids,
            purpose="evaluate",
            fix="pass the ids of questions in data.eval (a run's eval_ids.json lists its own), or drop data.eval_ids",
        )
    population = len(valid)
    if size := train_sample_size(cfg):  # of the mix, when data.train lists several sources
        train = stratified_sample(train, size, cfg.data.sample_seed)
    if cfg.data.eval_sample:
        valid = stratified_sample(valid, cfg.data.eval_sample, cfg.data.sample_seed)
    train = train[: cfg.data.train_limit]
    kept = Counter(origin[q.id] for q in train) if origin else Counter({0: len(train)})
    counts = [dict(source, questions=kept[i]) for i, source in enumerate(sources)]
    return TrainQuestions(train, counts), valid[: cfg.data.eval_limit], population


def train_mix(cfg: RunConfig) -> tuple[list[Question], list[dict], dict[str, int]]:
    """The training questions before data.train_sample / data.train_limit: `data.train` (or data.dir's
    train_split) as read, or, for a list of sources, each read, cut to its `limit` and weighted, in list order.
    Also each source's counts ({"source", "limit", "weight", "read", "mixed"}), and for a list the source
    (its index) of every question id. In a mix, an id met before (a repeat, or two sources' ids alike) becomes
    `<id>#2`, `<id>#3`, ... so that ids stay unique."""
    data = cfg.data
    if not isinstance(data.train, list):  # one source: read as it always was
        questions = list(read_data(cfg, "train").questions)
        label = data.train if data.train is not None else f"{data.dir or '$JSQUAD_DIR'}:{data.train_split}"
        count = {"source": label, "limit": None, "weight": None, "read": len(questions), "mixed": len(questions)}
        return questions, [count], {}
    mixed: list[Question] = []
    counts, origin, taken = [], {}, set()
    for i, item in enumerate(data.train):
        spec = item if isinstance(item, dict) else {"source": item}
        source, limit, weight = spec["source"], spec.get("limit"), spec.get("weight")
        read = read_split(source, "train", columns=data.columns, encoding=data.encoding).questions
        questions = _weighted(_capped(read, limit, data.sample_seed), weight, data.sample_seed)
        for q in questions:
            q = q if q.id not in taken else replace(q, id=_free_id(q.id, taken))
            taken.add(q.id)
            origin[q.id] = i
            mixed.append(q)
        counts.append({"source": source, "limit": limit, "weight": weight, "read": len(read), "mixed": len(questions)})
        log.info("data.train[%d] %s: %d of its %d questions", i, source, len(questions), len(read))
    return mixed, counts, origin


def _capped(questions: Sequence[Question], limit: int | None, seed: int) -> list[Question]:
    """At most `limit` questions: a seeded sample of whole passages, stratified by article, in data order."""
    if limit is None or limit >= len(questions):
        return list(questions)
    return stratified_sample(questions, limit, seed)[:limit]


def _weighted(questions: list[Question], weight: float | None, seed: int) -> list[Question]:
    """`questions` counted `weight` times: repeated for its integer part, and a seeded sample (whole passages)
    of round(fraction × their number) for its fraction."""
    if weight is None or weight == 1:
        return questions
    whole = int(weight)
    extra = round((weight - whole) * len(questions))
    sample = stratified_sample(questions, extra, seed + 1)[:extra] if extra else []
    return questions * whole + sample


def _free_id(qid: str, taken: set[str]) -> str:
    n = 2
    while f"{qid}#{n}" in taken:
        n += 1
    return f"{qid}#{n}"


def read_data(cfg: RunConfig, part: str, *, download: bool = True):
    """The run's training ("train") or evaluation ("eval") split: `data.train` / `data.eval` when set,
    else `data.dir`'s `train_split` / `eval_split`, with the config's column names and encoding."""
    data = cfg.data
    source, split = (data.train, "train") if part == "train" else (data.eval, "valid")
    if source is None:
        source, split = data.dir, data.train_split if part == "train" else data.eval_split
    return read_split(source, split, download=download, columns=data.columns, encoding=data.encoding)


def train_sample_size(cfg: RunConfig) -> int | None:
    """`data.train_sample`, or `data.train_sample_cpu_float32` where training runs in float32 on a CPU."""
    import torch

    from jsquad_lora.util.devices import train_in_bf16

    if (
        cfg.data.train_sample_cpu_float32
        and not torch.cuda.is_available()
        and not train_in_bf16(cfg.train.mixed_precision)
    ):
        log.info(
            "training in float32 on this CPU (no bf16 instructions): data.train_sample_cpu_float32=%d questions",
            cfg.data.train_sample_cpu_float32,
        )
        return cfg.data.train_sample_cpu_float32
    return cfg.data.train_sample
