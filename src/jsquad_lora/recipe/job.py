"""The recipe: the main job as stages (prepare → evaluate "before" → train → evaluate "after" → finish).

`main_job` reads like a table of contents; `prepare` (recipe/prepare.py) builds the `Job` the stages share
(config, run directory, questions, model, metrics) and each stage (recipe/stages.py) is a function of it.
The CLI configures logging and calls `main_job`.

Run directory layout (every file written atomically):
    config.yaml                 the resolved config
    base/                       the offline tiny model + tokenizer (safetensors), when model.name=tiny
    checkpoints/checkpoint-N/   Trainer checkpoints (resume point)
    adapter/                    the trained LoRA adapter (or full weights) + tokenizer, safetensors
    eval_ids.json               the evaluated question ids, when data.eval_sample draws a sample of the split
    predictions-before.jsonl    per-question answers before tuning (id, question, prediction, golds, em, f1)
    predictions-after.jsonl     the same after tuning
    failed-<stage>.jsonl        questions a chat endpoint (eval.backend=openai) failed to answer after its retries
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
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from jsquad_lora.config.load import load_config
from jsquad_lora.config.schema import RunConfig
from jsquad_lora.errors import InputError
from jsquad_lora.recipe.prepare import prepare
from jsquad_lora.recipe.rundir import FINISHED_HINT, finished_run, mark_started, run_dir_path, run_directory
from jsquad_lora.recipe.stages import (
    RESUME_FIX,
    evaluate_stage,
    finish,
    load_trained_stage,
    side_check_stage,
    train_stage,
    tune_abstention_stage,
)
from jsquad_lora.registry import EVAL_BACKENDS
from jsquad_lora.util import distributed
from jsquad_lora.util.files import out_of_space

log = logging.getLogger(__name__)


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
        if EVAL_BACKENDS[cfg.eval.backend].evaluate_split is not None:  # an endpoint: nothing local to train
            raise InputError(
                f"eval.backend={cfg.eval.backend}",
                "an endpoint answers this run's questions: there is no local model to train",
                fix="score the endpoint with `jsquad-lora evaluate --output DIR ...` (docs/chat-models.md); train "
                "runs with eval.backend=hf",
            )
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
        # the command's whole outcome: said on stderr whatever the log level
        print(
            f"{run_dir} holds a finished run: nothing to do; {FINISHED_HINT.format(run_dir=run_dir)}", file=sys.stderr
        )
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
