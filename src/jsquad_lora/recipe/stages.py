"""The recipe's stages after `prepare`, each a function of the shared `Job`: evaluate (before / after tuning),
the side check, train, tune the abstention threshold, load a trained adapter, finish (report, then
"finished"). Each skips what an earlier try of the same run completed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from jsquad_lora.data.question import Question
from jsquad_lora.data.sampling import sample_standard_error
from jsquad_lora.errors import InputError
from jsquad_lora.generate.decoding import decoding_config
from jsquad_lora.recipe.prepare import Job
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


def evaluate_stage(job: Job, stage: Stage) -> None:
    """Answer the evaluation questions with the base ("before") or trained ("after") model, or the chat endpoint of
    eval.backend=openai; score them."""
    predictions = job.run_dir / f"predictions-{stage}.jsonl"
    if _evaluated(job, stage, predictions):
        log.info("%s is complete: the evaluation %s tuning is not repeated", predictions.name, stage)
        return
    log.info("evaluating %d questions %s tuning", len(job.eval_questions), stage)
    endpoint = EVAL_BACKENDS[job.cfg.eval.backend].evaluate_split
    if endpoint is not None:  # a chat endpoint answers (eval.backend=openai): no model here
        result, entries = endpoint(job.cfg, job.eval_questions, job.train_questions, predictions)
        job.metrics.update(entries)
    else:
        result = _generated_here(job, stage, predictions)
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


def _generated_here(job: Job, stage: Stage, predictions: Path):
    """The evaluation with the run's model in this process (the hf, vllm and llama_cpp backends)."""
    from jsquad_lora.evaluate.loop import evaluate

    model = _inference_model(job, stage)
    adapter = job.adapter_dir if stage == "after" else None
    generator = EVAL_BACKENDS[job.cfg.eval.backend].answerer(
        job.cfg, job.run_dir, model, job.tokenizer, adapter, job.engines
    )
    return evaluate(
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
    if job.model is None:  # a chat endpoint answered (eval.backend=openai): no local model to ask
        log.info("no side check: eval.backend=%s has no local model", job.cfg.eval.backend)
        return
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
    if job.model is None:  # `run` with a chat endpoint (eval.backend=openai): its answers are scored, kept, resumable
        raise InputError(
            f"eval.backend={cfg.eval.backend}",
            "an endpoint answers this run's questions: there is no local model to train (its evaluation is kept)",
            fix=f"score an endpoint with `jsquad-lora evaluate` (the same overrides and --output {job.run_dir} write "
            "its report), and train runs with eval.backend=hf",
        )
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
    if encoded.lost:
        log.warning(
            "%d training questions gave no example: no window of their passage holds a gold answer wholly (an answer "
            "longer than the windows' overlap of %s tokens, cut at every window edge); raise model.max_length",
            encoded.lost,
            cfg.model.window_overlap,
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
        "questions_without_example": encoded.lost,
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
