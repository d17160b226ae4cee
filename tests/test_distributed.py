"""Several processes on the field's engine (torchrun + torch.distributed's gloo backend on the CPU):
the same predictions and training as one process, every question once, one set of files, and a
killed rank ends the job, which `--resume` then finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import SHARED, TINY_TEST, needs_data

ARGS = TINY_TEST + [
    "data.eval_limit=40",
    "eval.dtype=float32",  # float32: greedy answers do not depend on how the questions are batched
    "train.mixed_precision=float32",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def environment() -> dict:
    return {**os.environ, "JSQUAD_DIR": str(SHARED.resolve()), "OMP_NUM_THREADS": "1"}


def launch(argv: list, processes: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    prefix = TORCHRUN if processes == 2 else [sys.executable]
    return subprocess.run(
        [*prefix, "-m", "jsquad_lora", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(),
    )


def files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and "checkpoint-" not in str(p)}


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The same run with one process (8 rows a step) and with two (4 rows each: the same global batch)."""
    root = tmp_path_factory.mktemp("distributed")
    one = launch(["run", "--output", root / "one", *ARGS, "train.batch_size=8"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(["run", "--output", root / "two", *ARGS, "train.batch_size=4"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    return root / "one", root / "two"


@needs_data()
def test_two_processes_answer_every_question_once_as_one_process_does(one_and_two):
    one, two = one_and_two
    rows = [json.loads(line) for line in (two / "predictions-before.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40  # every question exactly once, in data order
    assert (two / "predictions-before.jsonl").read_bytes() == (one / "predictions-before.jsonl").read_bytes()
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["eval_before"]["generated"] == 40 and metrics["before"]["jglue"]["count"] == 40


@needs_data()
def test_two_processes_train_like_one_with_the_same_global_batch(one_and_two):
    one, two = one_and_two
    first, second = (json.loads((d / "metrics.json").read_text())["train"] for d in one_and_two)
    assert first["steps"] == second["steps"]  # the same global batches
    assert abs(second["final_loss"] - first["final_loss"]) <= 0.02 * first["final_loss"]
    assert files(two) == files(one)  # one set of files, written once (no per-rank leftovers)
    assert not list(two.glob("*.partial.jsonl"))


HOLDER_RANK = "1"


def _rank_process(launcher: subprocess.Popen, rank: str) -> psutil.Process | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == rank and "jsquad_lora" in " ".join(child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@needs_data()
def test_a_killed_rank_ends_the_job_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--output", out, *ARGS, "train.batch_size=2", "data.train_limit=160", "train.save_steps=2"]
    prefix = TORCHRUN
    launcher = subprocess.Popen(
        [*prefix, "-m", "jsquad_lora", *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and launcher.poll() is None:
        if any((p / "trainer_state.json").exists() for p in (out / "checkpoints").glob("checkpoint-*")):
            victim = _rank_process(launcher, HOLDER_RANK)
            if victim is not None:
                victim.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    else:
        os.killpg(launcher.pid, signal.SIGKILL)
        pytest.fail("training finished (or never checkpointed) before a rank could be killed")
    _, err = launcher.communicate(timeout=180)  # the job ends: no hang on the dead rank
    assert launcher.returncode != 0
    assert "rank" in err and ("SIGKILL" in err or "Signal 9" in err or "exitcode" in err), err[-2000:]
    assert not (out / "adapter").exists()
    resumed = launch([*argv, "--resume"], processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "adapter" / "model.safetensors").exists()
    steps = [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == json.loads((out / "metrics.json").read_text())["train"]["steps"]


@needs_data()
def test_training_metrics_go_to_tensorboard_when_asked(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = launch(["train", "--output", out, *ARGS, "train.report_to=[tensorboard]"])
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses == pytest.approx([row["loss"] for row in logged], rel=1e-6)  # the same curve as loss.jsonl
