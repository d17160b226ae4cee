"""The recipe's first stage: a run's questions, base model, prompt renderer and window overlap (`prepare`),
and the `Job` every later stage shares. Every check that depends on the data runs here, before any work:
bad data, a prompt that cannot fit, windows that cannot overlap as asked (every training and evaluation
question's windows are cut now), a training set that teaches abstaining to a run that may not abstain."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from jsquad_lora.config.schema import RunConfig
from jsquad_lora.data.question import Question
from jsquad_lora.data.select import run_questions
from jsquad_lora.errors import InputError
from jsquad_lora.model.source import base_model_and_tokenizer, base_model_card
from jsquad_lora.prompts.fewshot import make_renderer
from jsquad_lora.recipe.rundir import METRICS_FIX, with_stored_overlap
from jsquad_lora.registry import EVAL_BACKENDS
from jsquad_lora.util import distributed
from jsquad_lora.util.files import write_json

log = logging.getLogger(__name__)


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
    if backend.evaluate_split is not None:  # an endpoint answers: no weights, tokenizer or windows on this machine
        return _endpoint_job(cfg, run_dir, train_questions, eval_questions, metrics, engines, evaluating)
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


def _endpoint_job(cfg: RunConfig, run_dir: Path, train_questions, eval_questions, metrics, engines, evaluating) -> Job:
    """The job of a backend that answers with no local model (a chat endpoint, eval.backend=openai): no base model,
    no tokenizer, no windows (the endpoint reads each whole passage); the training questions are the few-shot pool.
    The prompt renderer is the templates' own with no tokenizer (the endpoint renders `chat` turns itself)."""
    if not evaluating:
        raise InputError(
            f"eval.backend={cfg.eval.backend}",
            "an endpoint answers this run's questions: there is no local model to train",
            fix="score the endpoint with `jsquad-lora evaluate --output DIR ...`; train a run with eval.backend=hf",
        )
    metrics.pop("base_model", None)  # the endpoint's model is named by metrics.json's "endpoint", not a card
    _check_abstention(cfg, train_questions)
    render = make_renderer(cfg, None, train_questions)
    return Job(cfg, run_dir, train_questions, eval_questions, None, None, render, metrics, engines)


def _fit_windows(cfg: RunConfig, run_dir: Path, render, tokenizer, train_questions, eval_questions) -> RunConfig:
    """`cfg` with the run's window overlap (model.window_overlap as set, kept from an earlier try of this run, or
    derived now), written to config.yaml. Every training and evaluation question's windows are cut with it now:
    a prompt that cannot fit even with its passage removed, or an overlap that cannot fit, fails before any work."""
    import dataclasses

    from jsquad_lora.config.load import config_to_yaml
    from jsquad_lora.encoding.windows import run_overlap
    from jsquad_lora.util.files import write_text

    m = cfg.model
    overlap = with_stored_overlap(cfg, run_dir / "config.yaml").model.window_overlap
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
