"""A run's questions: the training and evaluation splits of `data:`, sampled and cut as the config says.

The samples (`data.train_sample`, `data.eval_sample`) are seeded, stratified by article and drawn as whole
passages (`sampling.py`); where training runs in float32 on a CPU, `data.train_sample_cpu_float32` keeps
the same time budget. The `*_limit` cuts come last (smoke tests).
"""

from __future__ import annotations

import logging

from jsquad_lora.config.schema import RunConfig
from jsquad_lora.data.formats import read_split
from jsquad_lora.data.question import Question
from jsquad_lora.data.sampling import select_ids, stratified_sample

log = logging.getLogger(__name__)


def load_questions(cfg: RunConfig) -> tuple[list[Question], list[Question]]:
    """Training and evaluation questions: all of each split, or its seeded stratified sample
    (`data.train_sample` / `data.eval_sample`), then the first `*_limit` (smoke tests)."""
    train, valid, _ = _questions(cfg)
    return train, valid


def _questions(cfg: RunConfig) -> tuple[list[Question], list[Question], int]:
    """`load_questions`, and the size of the evaluation split the sample was drawn from."""
    train = read_data(cfg, "train").questions
    valid = read_data(cfg, "eval").questions
    if cfg.data.eval_ids:
        valid = select_ids(
            valid,
            cfg.data.eval_ids,
            purpose="evaluate",
            fix="pass the ids of questions in data.eval (a run's eval_ids.json lists its own), or drop data.eval_ids",
        )
    population = len(valid)
    if size := train_sample_size(cfg):
        train = stratified_sample(train, size, cfg.data.sample_seed)
    if cfg.data.eval_sample:
        valid = stratified_sample(valid, cfg.data.eval_sample, cfg.data.sample_seed)
    return train[: cfg.data.train_limit], valid[: cfg.data.eval_limit], population


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
