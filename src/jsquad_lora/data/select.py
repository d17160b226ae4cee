"""The recipe: the main job as stages (prepare → evaluate "before" → train → evaluate "after" → finish).

`main_job` reads like a table of contents; each stage is a function of the `Job` the stages share
(config, run directory, questions, model, metrics). The CLI configures logging and calls it.

Run directory layout (every file written atomically):
    config.yaml                 the resolved config
    base/                       the offline tiny model + tokenizer (safetensors), when model.name=tiny
    checkpoints/checkpoint-N/   Trainer checkpoints (resume point)
    adapter/                    the trained LoRA adapter (or full weights) + tokenizer, safetensors
    eval_ids.json               the evaluated question ids, when data.eval_sample draws a sample of the split
    predictions-before.jsonl    per-question answers before tuning (id, question, prediction, golds, em, f1)
    predictions-after.jsonl     the same after tuning
    loss.jsonl, loss.png        the training loss curve
    side_check.json             free generation for the seed's side-check prompt, before and after
    .vllm-merged/               base + adapter merged for vLLM while it evaluates (eval.backend=vllm,
                                architectures without LoRA in vLLM)
    metrics.json                scores, timings, base model card, sample and its standard error;
                                "finished": true once complete
    report.md, report.html, scores.png
"""

from __future__ import annotations

import logging

from jsquad_lora.config.schema import RunConfig
from jsquad_lora.data.formats import read_split
from jsquad_lora.data.question import Question
from jsquad_lora.data.sampling import stratified_sample

log = logging.getLogger(__name__)


def load_questions(cfg: RunConfig) -> tuple[list[Question], list[Question]]:
    """Training and evaluation questions: all of each split, or its seeded stratified sample
    (`data.train_sample` / `data.eval_sample`), then the first `*_limit` (smoke tests)."""
    train, valid, _ = _questions(cfg)
    return train, valid


def _questions(cfg: RunConfig) -> tuple[list[Question], list[Question], int]:
    """`load_questions`, and the size of the evaluation split the sample was drawn from."""
    train = read_split(cfg.data.dir, cfg.data.train_split).questions
    valid = read_split(cfg.data.dir, cfg.data.eval_split).questions
    population = len(valid)
    if size := train_sample_size(cfg):
        train = stratified_sample(train, size, cfg.data.sample_seed)
    if cfg.data.eval_sample:
        valid = stratified_sample(valid, cfg.data.eval_sample, cfg.data.sample_seed)
    return train[: cfg.data.train_limit], valid[: cfg.data.eval_limit], population


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
