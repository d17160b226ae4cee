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

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from jsquad_lora.config.load import load_config
from jsquad_lora.config.schema import RunConfig
from jsquad_lora.data.question import Question
from jsquad_lora.data.sampling import sample_standard_error
from jsquad_lora.data.select import run_questions
from jsquad_lora.errors import InputError
from jsquad_lora.generate.decoding import decoding_config
from jsquad_lora.model.source import base_model_and_tokenizer, base_model_card
from jsquad_lora.prompts.fewshot import make_renderer
from jsquad_lora.recipe.rundir import (
    FINISHED_HINT,
    METRICS_FIX,
    finished_run,
    mark_started,
    run_dir_path,
    run_directory,
    stored_window_overlap,
)
from jsquad_lora.registry import EVAL_BACKENDS
from jsquad_lora.util import distributed
from jsquad_lora.util.files import out_of_space, write_json
from jsquad_lora.util.jsonio import read_jsonl, read_jsonl_prefix

log = logging.getLogger(__name__)
Stage = Literal["before", "after"]
#: metrics.json's key for each evaluation's timings (older runs' names, kept for their reports)
EVAL_SUMMARY_KEY = {"before": "eval_before", "after": "eval"}
#: the fix of a full disk: every stage resumes (a checkpoint or a predictions line is complete or ignored)
RESUME_FIX = (
    "free space on that disk (or move {run_dir} to a larger one) and run the same command again: the run "
    "resumes where it stopped (training from its last complete checkpoint)"
)


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
    engines: Any = None  # what the evaluation backend holds for the job (vLLM: evaluate.vllm.VllmEngines)
    side_check: dict = field(default_factory=dict)
    held_out: list[Question] = field(default_factory=list)  # training questions kept to tune the abstention threshold
    synthetic: list[Question] = field(default_factory=list)  # cloze questions trained beside the training questions
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
    cfg = load_config(config, overrides)
    if stages in ("run", "train"):
        from jsquad_lora.train.trainer import check_fsdp_possible

        check_fsdp_possible(cfg.train)  # before any work, not after the before-evaluation
    distributed.init()
    with _run_directory(cfg, output, resume, overwrite) as run_dir:
        if (missing := finished_run(run_dir, cfg)) is not None:
            _nothing_to_do(run_dir, missing)
        else:
            with EVAL_BACKENDS[cfg.eval.backend].resources() as engines:
                _stages(cfg, run_dir, engines, stages)
    distributed.shutdown()
    return run_dir


def _stages(cfg: RunConfig, run_dir: Path, engines, stages: str) -> None:
    """The stages `stages` asks for, each skipped where an earlier try of this run finished it."""
    evaluating = stages in ("run", "evaluate")
    with out_of_space("the run's files", run_dir, fix=RESUME_FIX.format(run_dir=run_dir)):
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
        if job.trained and job.held_out:
            tune_abstention_stage(job)
        if evaluating and cfg.eval.after and job.trained:
            evaluate_stage(job, "after")
            if job.side_check:
                side_check_stage(job, "after")
        finish(job, finished=stages == "run", report=evaluating)


def _nothing_to_do(run_dir: Path, missing: list[str]) -> None:
    """A finished run asked for again: its missing report files written, and what to do instead said."""
    if distributed.is_main():
        if missing:
            from jsquad_lora.report.render import write_report

            write_report([run_dir], run_dir)
            log.info("wrote the missing %s", ", ".join(missing))
        log.info("%s holds a finished run: nothing to do; %s", run_dir, FINISHED_HINT.format(run_dir=run_dir))
    distributed.barrier()


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


def prepare(cfg: RunConfig, run_dir: Path, *, evaluating: bool, engines=None) -> Job:
    """Questions (bad data fails here, before any model is loaded), the base model, the prompt renderer."""
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
    if not isinstance(metrics, dict):
        raise InputError(metrics_path, "not a JSON object", fix=METRICS_FIX)
    metrics.update({"model": cfg.model.name, "recipe": cfg.name, "finished": False})
    train_questions, eval_questions, population = run_questions(cfg)
    metrics["train_sources"] = train_questions.sources  # each data.train source's count (a mix lists several)
    if cfg.task == "question":  # passage + answer → the human question (questions without an answer drop out)
        from jsquad_lora.data.question import as_question_task

        train_questions = [r for r in map(as_question_task, train_questions) if r is not None]
        eval_questions = [r for r in map(as_question_task, eval_questions) if r is not None]
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
    backend = EVAL_BACKENDS[cfg.eval.backend]
    if evaluating:
        if backend.single_process and distributed.world_size() > 1:
            raise InputError(
                f"eval.backend={backend.name}",
                backend.single_process[0],
                fix=backend.single_process[1],
            )
        backend.check(cfg.eval.decoding)
        if cfg.eval.abstain and backend.name != "hf":
            raise InputError(
                f"eval.backend={backend.name}",
                "eval.abstain needs each answer's scores, which only the hf backend gives",
                fix="evaluate with eval.backend=hf, or set eval.abstain=false",
            )
    model, tokenizer = base_model_and_tokenizer(cfg, run_dir, train_questions)
    metrics["base_model"] = base_model_card(cfg.model, model)
    held_out: list[Question] = []
    if cfg.train.abstain_holdout:
        from jsquad_lora.data.write import split_by_document

        train_questions, held_out = split_by_document(
            train_questions, cfg.train.abstain_holdout, cfg.data.sample_seed, source="train.abstain_holdout"
        )
    render = make_renderer(cfg, tokenizer, train_questions)
    synthetic: list[Question] = []
    if cfg.train.synthetic_per_passage and not (run_dir / "adapter").exists():
        from jsquad_lora.data.augment import cloze_questions

        synthetic = cloze_questions(train_questions, cfg.train.synthetic_per_passage, cfg.train.seed)
    cfg = _fit_windows(cfg, run_dir, render, tokenizer, [*train_questions, *synthetic], [*eval_questions, *held_out])
    _check_abstention(cfg, train_questions)
    job = Job(cfg, run_dir, train_questions, eval_questions, model, tokenizer, render, metrics, engines)
    job.held_out, job.synthetic = held_out, synthetic
    return job


def _fit_windows(cfg: RunConfig, run_dir: Path, render, tokenizer, train_questions, eval_questions) -> RunConfig:
    """`cfg` with the run's window overlap (model.window_overlap as set, kept from an earlier try of this run, or
    derived now), written to config.yaml. Every training and evaluation question's windows are cut with it now:
    a prompt that cannot fit even with its passage removed, or an overlap that cannot fit, fails before any work."""
    import dataclasses

    from jsquad_lora.config.load import config_to_yaml
    from jsquad_lora.encoding.windows import run_overlap
    from jsquad_lora.util.files import write_text

    m = cfg.model
    overlap = m.window_overlap if m.window_overlap is not None else stored_window_overlap(run_dir / "config.yaml")
    eval_budget = m.max_length - cfg.eval.max_new_tokens
    if cfg.task == "question":
        _check_one_window(cfg, render, tokenizer, train_questions, eval_questions)
    overlap = run_overlap(
        train_questions, eval_questions, render, tokenizer, m.max_length, eval_budget, overlap, m.window_tokens
    )
    if m.window_overlap is None:
        log.info("windows of a passage too long for one prompt overlap by %d tokens (derived)", overlap)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, window_overlap=overlap))
    if distributed.is_main():
        write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    return cfg


def _check_one_window(cfg: RunConfig, render, tokenizer, train_questions, eval_questions) -> None:
    """task=question reads each passage in one prompt (a window without the answer asks about nothing): a
    question whose prompt does not fit fails now."""
    from jsquad_lora.encoding.tokens import prompt_ids, target_ids

    m = cfg.model
    for q, training in [(q, True) for q in train_questions] + [(q, False) for q in eval_questions]:
        length = len(prompt_ids(tokenizer, render(q)))
        room = m.max_length - (len(target_ids(tokenizer, q)) if training else cfg.eval.max_new_tokens)
        if length > room:
            raise InputError(
                "task=question",
                f"question {q.id}: its prompt is {length} tokens, more than the {room} it may take, and task=question "
                "reads each passage in one prompt",
                fix="raise model.max_length, or use shorter passages (`data generate` cuts documents to fit one)",
            )


def _check_abstention(cfg: RunConfig, train_questions) -> None:
    """A training set that teaches abstaining to a run that may not abstain fails now."""
    unanswerable = sum(not q.answerable for q in train_questions)
    if (unanswerable or cfg.train.negative_windows or cfg.train.abstain_holdout) and not cfg.eval.abstain:
        why = (
            f"{unanswerable} training questions have no answer"
            if unanswerable
            else "train.negative_windows=true"
            if cfg.train.negative_windows
            else "train.abstain_holdout is set"
        )
        raise InputError(
            "eval.abstain",
            f"{why}: the model learns to abstain, but eval.abstain=false never lets it",
            fix="add eval.abstain=true (or train on questions that all have answers)",
        )


def evaluate_stage(job: Job, stage: Stage) -> None:
    """Answer the evaluation questions with the base ("before") or trained ("after") model; score them."""
    from jsquad_lora.evaluate.loop import evaluate

    predictions = job.run_dir / f"predictions-{stage}.jsonl"
    if _evaluated(job, stage, predictions):
        log.info("%s is complete: the evaluation %s tuning is not repeated", predictions.name, stage)
        return
    log.info("evaluating %d questions %s tuning", len(job.eval_questions), stage)
    model = _inference_model(job, stage)
    adapter = job.adapter_dir if stage == "after" else None
    generator = EVAL_BACKENDS[job.cfg.eval.backend].answerer(
        job.cfg, job.run_dir, model, job.tokenizer, adapter, job.engines
    )
    result = evaluate(
        model,
        job.tokenizer,
        job.eval_questions,
        job.render,
        decoding_config(job.cfg),
        job.cfg.model.max_length,
        predictions,
        generator=generator,
        overlap=job.cfg.model.window_overlap,
        window_tokens=job.cfg.model.window_tokens,
    )
    if not distributed.is_main():
        return  # the main process merged every rank's answers and scores them
    if result.windowed_questions:
        log.info("%d evaluation passages were too long for one prompt: read in windows", result.windowed_questions)
    job.metrics[stage] = result.scores
    if job.cfg.task == "question":  # scored against the human question
        from jsquad_lora.evaluate.scorers import question_scores

        answers = {row["id"]: row.get("prediction") or "" for _, row in read_jsonl(predictions)}
        job.metrics[stage]["question"] = question_scores(job.eval_questions, answers)
    if "sample" in job.metrics:
        errors = job.metrics["sample"].setdefault("em_standard_error", {})
        errors[stage] = _em_standard_error(predictions, job.eval_questions, job.metrics["sample"]["of"])
    job.metrics[EVAL_SUMMARY_KEY[stage]] = result.summary()
    job.save_metrics()


def _evaluated(job: Job, stage: Stage, predictions: Path) -> bool:
    """Whether an earlier try of this run finished this evaluation: its scores are in metrics.json and
    its predictions file holds exactly these questions (a resume after a later stage died)."""
    from jsquad_lora.evaluate.scorers import SCORERS

    scores = job.metrics.get(stage)
    if not isinstance(scores, dict) or not set(SCORERS) <= set(scores) or not predictions.is_file():
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
    from jsquad_lora.evaluate.perplexity import passage_perplexity
    from jsquad_lora.generate.greedy import generate_free
    from jsquad_lora.prompts.templates import side_check_prompt

    if not distributed.is_main():
        return  # one free generation, on the main process
    prompt = side_check_prompt(job.cfg.prompt.template, job.tokenizer)
    model = _inference_model(job, stage)
    job.side_check["prompt"] = prompt
    job.side_check[stage] = generate_free(model, job.tokenizer, prompt, max_new_tokens=64)
    # what the QA tuning cost general language modelling: perplexity on the evaluation passages, no questions
    found = passage_perplexity(model, job.tokenizer, job.eval_questions, job.cfg.model.max_length)
    modelling = job.metrics.setdefault("language_modelling", {})
    modelling.update({k: v for k, v in found.items() if k != "perplexity"})
    modelling[stage] = found["perplexity"]
    job.save_metrics()


def train_stage(job: Job) -> None:
    """LoRA (or every weight) trained on the training questions; the adapter saved; the model merged."""
    import torch

    from jsquad_lora.encoding.windows import encode_train_windows
    from jsquad_lora.model.lora import attach_lora, count_parameters, merged
    from jsquad_lora.train.checkpoints import newest_checkpoint_size, remove_incomplete_checkpoints
    from jsquad_lora.train.trainer import train
    from jsquad_lora.util.devices import train_in_bf16

    cfg = job.cfg
    job.base_for_inference = None  # the before-tuning copy is done with: free its memory
    stale = job.run_dir / "predictions-after.jsonl"
    if distributed.is_main() and stale.exists():  # answers of an adapter that is gone: not this one's
        log.warning("%s answers with an adapter that is no longer here: it is evaluated again", stale.name)
        stale.unlink()
        for key in ("after", EVAL_SUMMARY_KEY["after"]):
            job.metrics.pop(key, None)
    quantized = cfg.model.load_in_8bit or cfg.model.load_in_4bit
    torch.manual_seed(cfg.train.seed)  # LoRA's initial A matrices: the same run, the same adapter
    model = attach_lora(
        job.model, cfg.lora, quantized=quantized, gradient_checkpointing=cfg.model.gradient_checkpointing
    )
    trainable, total = count_parameters(model)
    log.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100 * trainable / total)
    train_set = [*job.train_questions, *job.synthetic]
    encoded = encode_train_windows(
        train_set,
        job.render,
        job.tokenizer,
        cfg.model.max_length,
        cfg.model.window_overlap,
        cfg.train.negative_windows,
        cfg.model.window_tokens,
    )
    examples, windowed = encoded.examples, encoded.windowed
    n_examples = len(examples)
    if cfg.train.batching == "shared_prefix":
        from jsquad_lora.encoding.packing import share_prefixes

        examples = share_prefixes(examples, encoded.passages, max_tokens=2 * cfg.model.max_length)
        log.info("%d examples packed into %d shared-prefix rows", n_examples, len(examples))
    if windowed:
        log.info(
            "%d of %d training questions exceed model.max_length=%d: their passages were read in windows "
            "(the windows holding an answer%s)",
            windowed,
            len(train_set),
            cfg.model.max_length,
            ", and the others as no-answer examples" if cfg.train.negative_windows else "",
        )
    bf16 = train_in_bf16(cfg.train.mixed_precision)
    log.info(
        "training in %s (train.mixed_precision=%s)",
        "bfloat16 autocast" if bf16 else cfg.model.dtype,
        cfg.train.mixed_precision,
    )
    # train() saves the adapter; every rank sees it (job.trained) when it returns
    checkpoints = job.run_dir / "checkpoints"
    try:
        with out_of_space(
            "a training checkpoint or the adapter",
            checkpoints,
            fix=RESUME_FIX.format(run_dir=job.run_dir),
            needed=lambda: newest_checkpoint_size(checkpoints),
        ):
            result = train(
                model,
                examples,
                cfg.train,
                checkpoints,
                job.run_dir / "loss.jsonl",
                bf16=bf16,
                save_to=job.adapter_dir,
                tokenizer=job.tokenizer,
            )
    except InputError:
        if distributed.is_main():
            remove_incomplete_checkpoints(checkpoints)  # half-written: never a resume point, and they hold space
        raise
    job.model = merged(model)
    job.metrics["train"] = {
        **result.summary(),
        "examples": n_examples,
        "rows": len(examples),
        "synthetic_examples": len(train_set) - len(job.train_questions),
        "windowed_questions": windowed,
        "no_answer_examples": encoded.no_answer,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    job.save_metrics()


def tune_abstention_stage(job: Job) -> None:
    """eval.abstain_threshold tuned on the held-out training questions (`evaluate.abstention`), once per run:
    metrics.json's "abstention" keeps it, and the evaluation after tuning, `ask` and `serve` use it."""
    import dataclasses

    from jsquad_lora.evaluate.abstention import tune_threshold

    found = job.metrics.get("abstention")
    if not (isinstance(found, dict) and isinstance(found.get("threshold"), (int, float))):
        log.info("tuning the abstention threshold on %d held-out training questions", len(job.held_out))
        found = tune_threshold(
            _inference_model(job, "after"),
            job.tokenizer,
            job.held_out,
            job.render,
            decoding_config(job.cfg),
            job.cfg.model.max_length,
            job.cfg.model.window_overlap,
            job.cfg.model.window_tokens,
        )
        log.info(
            "abstention threshold %.3f: held-out EM %.2f (%.2f at 0)",
            found["threshold"],
            found["em_at_threshold"],
            found["em_at_zero"],
        )
        job.metrics["abstention"] = found
        job.save_metrics()
    job.cfg = dataclasses.replace(job.cfg, eval=dataclasses.replace(job.cfg.eval, abstain_threshold=found["threshold"]))


def load_trained_stage(job: Job) -> None:
    """The run's saved adapter (or full weights) on the base model, for evaluation."""
    from jsquad_lora.model.lora import load_trained

    job.model = load_trained(job.model, job.adapter_dir, job.cfg.lora.enabled)


def finish(job: Job, *, finished: bool, report: bool) -> None:
    """side_check.json, the report, then metrics.json, marked finished only once everything else is
    written (a kill in between leaves a run that resumes), and the summary lines in the log."""
    from jsquad_lora.evaluate.scorers import SCORERS

    if not distributed.is_main():
        return

    if job.side_check:
        write_json(job.run_dir / "side_check.json", job.side_check)
    job.save_metrics()  # the report reads the final scores from it
    if report:
        from jsquad_lora.report.render import write_report

        write_report([job.run_dir], job.run_dir)
    if finished:  # train/evaluate alone leave the run open for the rest
        job.metrics["finished"] = True
        job.save_metrics()
    for name in SCORERS:
        parts = [
            f"{tag} {job.metrics[tag][name]['exact_match']:.2f}" for tag in ("before", "after") if tag in job.metrics
        ]
        if parts:
            log.info("EM (%s): %s", name, " → ".join(parts))
    log.info("run directory: %s", job.run_dir)


def _inference_model(job: Job, stage: Stage):
    """The model in `eval.dtype` (resolved for this machine: bfloat16 where the CPU/GPU is fast in it).
    Before tuning: a cast copy, made once, so that training still starts from the untouched weights.
    After: the trained model itself (its adapter is saved)."""
    import copy

    import torch

    from jsquad_lora.util.devices import inference_dtype

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
