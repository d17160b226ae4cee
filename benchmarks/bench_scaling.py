"""Training examples/s and evaluation questions/s with 1 and N processes (torchrun), one run each.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_scaling.py                 # 1 and 2 CPU processes
    JSQUAD_DIR=... .venv/bin/python benchmarks/bench_scaling.py --processes 1 8 --config gemma-3-270m   # 8 GPUs

Each row is a whole `jsquad-lora run` (tiny config by default, sized by the overrides below) launched
with `torchrun --standalone --nproc_per_node N`; the numbers come from its metrics.json: training
examples / training seconds, evaluated questions / seconds of the after-tuning evaluation. On CPUs
each process gets cores / N threads, so 2 processes on 2 cores show the overhead, not a speed-up:
the point there is that the sharded job is correct (tests/test_distributed.py). Writes
benchmarks/results/scaling.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import harness

TINY = [
    "model.tiny_layers=2", "model.tiny_hidden=128", "model.tiny_heads=4", "model.tiny_intermediate=512",
    "data.train_limit=400", "data.eval_limit=400", "train.epochs=1", "train.batch_size=2",
    "eval.dtype=float32", "train.mixed_precision=float32", "eval.side_check=false",
]  # fmt: skip


def run(processes: int, config: str, overrides: list[str], out: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "-m", "jsquad_lora", "run", "--config", config, "--output", str(out), *overrides]
    with harness.Timer() as timer:
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    metrics = json.loads((out / "metrics.json").read_text())
    train, evaluation = metrics["train"], metrics["eval"]
    return {
        "processes": processes,
        "threads_per_process": threads,
        "train_examples_per_second": train["examples"] / train["seconds"],
        "train_seconds": train["seconds"],
        "eval_questions_per_second": evaluation["questions"] / evaluation["seconds"],
        "eval_seconds": evaluation["seconds"],
        "final_loss": train["final_loss"],
        "wall_seconds": timer.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", default="tiny-cpu")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/scaling.json)")
    parser.add_argument("overrides", nargs="*", help="key=value (default for tiny-cpu: a 400-question run)")
    args = parser.parse_args()
    overrides = args.overrides or (TINY if args.config == "tiny-cpu" else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:
            base = rows[0]["train_examples_per_second"] if rows else None
            row = run(
                n, args.config, [*overrides, f"train.batch_size={_per_device(overrides, n)}"], Path(tmp) / f"p{n}"
            )
            row["train_speedup"] = row["train_examples_per_second"] / base if base else 1.0
            rows.append(row)
    import torch

    device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    print(f"{args.config} on {device}; {harness.describe()}")
    harness.print_table(
        rows,
        [
            ("processes", "processes"),
            ("threads each", "threads_per_process"),
            ("train examples/s", "train_examples_per_second", ".1f"),
            ("speed-up", "train_speedup", ".2f"),
            ("eval questions/s", "eval_questions_per_second", ".1f"),
            ("final loss", "final_loss", ".4f"),
        ],
    )
    harness.write_result(
        "scaling",
        rows,
        out=args.out,
        title="1 vs N processes (torchrun)",
        config=args.config,
        overrides=overrides,
        device=device,
    )


def _per_device(overrides: list[str], processes: int) -> int:
    """The per-device batch that keeps the global batch of the 1-process run."""
    batch = next((int(o.split("=")[1]) for o in overrides if o.startswith("train.batch_size=")), 8)
    return max(1, batch // processes)


if __name__ == "__main__":
    main()
