"""kill -9 during training and during evaluation, then the same command again: nothing repeated,
nothing skipped, and the result equals an uninterrupted run's."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_TEST, needs_data
from safetensors.torch import load_file

TRAIN = TINY_TEST + [
    "lora.enabled=true",
    "lora.r=4",
    "lora.target_modules=[all-linear]",
    "lora.dropout=0.1",
    "data.train_limit=160",
    "train.epochs=2",
    "train.save_steps=5",
    "model.tiny_hidden=96",
    "train.learning_rate=3e-3",
]


def cli(*argv):
    return [sys.executable, "-m", "jsquad_lora.cli", *map(str, argv)]


def run_to_end(*argv):
    result = subprocess.run(cli(*argv), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_when(argv, ready, timeout=300):
    """Start the command, SIGKILL it as soon as `ready()` holds; True if it was killed mid-way."""
    process = subprocess.Popen(cli(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    process.wait()
    return False


def losses(run_dir: Path):
    return [row for row in map(json.loads, (run_dir / "loss.jsonl").read_text().splitlines())]


FULL = [a for a in TRAIN if not a.startswith("lora.")] + ["lora.enabled=false"]


def checkpoint_done(run_dir: Path, step: int | None = None):
    """`ready()` for kill_when: a complete checkpoint (the first one, or the one at `step`)."""
    pattern = "checkpoint-*" if step is None else f"checkpoint-{step}"
    return lambda: any((p / "trainer_state.json").exists() for p in (run_dir / "checkpoints").glob(pattern))


@needs_data()
@pytest.mark.parametrize(
    "argv, weights, stop",
    [
        (TRAIN, "adapter_model.safetensors", "kill"),  # LoRA, killed mid-training
        (FULL, "model.safetensors", "kill"),  # full fine-tuning: every weight, the output layer included
        (FULL, "model.safetensors", "last"),  # stopped after the final checkpoint, before the adapter was saved
    ],
    ids=["lora-killed", "full-killed", "full-after-last-checkpoint"],
)
def test_training_resumes_exactly(tmp_path, argv, weights, stop):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_to_end("train", "--output", reference, *argv)
    steps = json.loads((reference / "metrics.json").read_text())["train"]["steps"]
    if stop == "kill":
        killed = kill_when(["train", "--output", interrupted, *argv], checkpoint_done(interrupted))
        assert killed, "training finished before it could be killed; make it longer"
    else:  # the state a kill right after the final checkpoint leaves (too short a window to hit reliably)
        assert (reference / "checkpoints" / f"checkpoint-{steps}" / "trainer_state.json").exists()
        shutil.copytree(reference, interrupted)
        shutil.rmtree(interrupted / "adapter")
        (interrupted / "loss.jsonl").unlink()
        (interrupted / "metrics.json").unlink()
    assert not (interrupted / "adapter").exists()
    run_to_end("train", "--output", interrupted, *argv)  # the same command again resumes

    ref_log, got_log = losses(reference), losses(interrupted)
    assert [r["step"] for r in got_log] == [r["step"] for r in ref_log]  # no step repeated or skipped
    assert json.loads((interrupted / "metrics.json").read_text())["train"]["steps"] == steps
    assert abs(got_log[-1]["loss"] - ref_log[-1]["loss"]) < 1e-6
    ref_w, got_w = load_file(reference / "adapter" / weights), load_file(interrupted / "adapter" / weights)
    assert ref_w.keys() == got_w.keys()
    if argv is FULL:
        assert any("embed_out" in k or "lm_head" in k for k in ref_w)
    for name in ref_w:  # every weight
        assert (ref_w[name] - got_w[name]).abs().max().item() < 1e-6, name


@needs_data()
def test_evaluation_resumes_without_regenerating(tmp_path):
    argv = ["evaluate", *TINY_TEST, "data.eval_limit=160", "eval.batch_size=4", "eval.side_check=false"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_to_end(*argv[:1], "--output", reference, *argv[1:])
    partial = interrupted / "predictions-before.partial.jsonl"
    killed = kill_when(
        [argv[0], "--output", interrupted, *argv[1:]],
        lambda: partial.exists() and partial.read_bytes().count(b"\n") >= 12,
    )
    assert killed, "evaluation finished before it could be killed"
    answered = len(partial.read_bytes().splitlines())
    run_to_end(argv[0], "--output", interrupted, *argv[1:])

    lines = (interrupted / "predictions-before.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line complete JSON
    assert len(rows) == 160 and len({r["id"] for r in rows}) == 160
    assert rows == [json.loads(line) for line in (reference / "predictions-before.jsonl").read_text().splitlines()]
    metrics = json.loads((interrupted / "metrics.json").read_text())
    assert metrics["eval_before"]["generated"] <= 160 - (answered - 1)  # answered questions were not generated again
    assert metrics["before"]["jglue"]["count"] == 160


@needs_data()
def test_a_resumed_run_does_not_repeat_a_finished_evaluation(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "--output", out, *TRAIN, "eval.side_check=false"]
    killed = kill_when(argv, checkpoint_done(out))  # the before-evaluation finished, training had begun
    assert killed, "the run finished before it could be killed; make it longer"
    before = out / "predictions-before.jsonl"
    written = (before.stat().st_mtime_ns, before.read_bytes())
    result = run_to_end(*argv)
    assert "predictions-before.jsonl is complete: the evaluation before tuning is not repeated" in result.stderr
    assert (before.stat().st_mtime_ns, before.read_bytes()) == written  # not generated (or written) again
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["before"]["jglue"]["count"] == metrics["after"]["jglue"]["count"]
