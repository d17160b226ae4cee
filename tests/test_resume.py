"""kill -9 during training and during evaluation, then the same command again: nothing repeated,
nothing skipped, and the result equals an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


@needs_data()
def test_training_resumes_exactly_after_kill(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_to_end("train", "--output", reference, *TRAIN)
    killed = kill_when(
        ["train", "--output", interrupted, *TRAIN],
        lambda: any((p / "trainer_state.json").exists() for p in (interrupted / "checkpoints").glob("checkpoint-*")),
    )
    assert killed, "training finished before it could be killed; make it longer"
    assert not (interrupted / "adapter").exists()
    run_to_end("train", "--output", interrupted, *TRAIN)  # the same command again resumes

    ref_log, got_log = losses(reference), losses(interrupted)
    assert [r["step"] for r in got_log] == [r["step"] for r in ref_log]  # no step repeated or skipped
    assert abs(got_log[-1]["loss"] - ref_log[-1]["loss"]) < 1e-6
    ref_w, got_w = (
        load_file(reference / "adapter" / "adapter_model.safetensors"),
        load_file(interrupted / "adapter" / "adapter_model.safetensors"),
    )
    assert ref_w.keys() == got_w.keys()
    assert max((ref_w[k] - got_w[k]).abs().max().item() for k in ref_w) < 1e-6


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
