"""Benchmark: what a run's GGUF exports score and how fast they answer through llama.cpp, beside this tool's
own evaluation of the same merged model on the same questions (greedy decoding both ways).

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_gguf.py --run runs/gemma-3-270m \
        [--quantize f16 q8_0] [--work /tmp/bench-gguf]

Every step is the command a user runs (printed as it runs): `export --merge` and `evaluate` with the HF
backend, then per quantisation `export --format gguf --quantize Q` and `evaluate` of that file with
`eval.backend=llama_cpp`. Each evaluation uses the run's config (its dev sample: the same question ids).
Needs llama-cpp-python (`pip install -e '.[llamacpp]'`, built from source).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import harness

CLI = [sys.executable, "-m", "jsquad_lora.cli"]
COMMON = ["eval.decoding=greedy", "eval.after=false", "eval.side_check=false"]


def run(argv: list[str]) -> None:
    print("$ jsquad-lora " + shlex.join(argv[len(CLI) :]), flush=True)
    subprocess.run(argv, check=True)


def evaluated(directory: Path, run_metrics: dict) -> dict:
    metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    seconds = metrics["eval_before"]["seconds"]
    count = metrics["before"]["jglue"]["count"]
    return {
        "em": metrics["before"]["jglue"]["exact_match"],
        "f1": metrics["before"]["jglue"]["f1"],
        "em_se": (metrics.get("sample") or {}).get("em_standard_error", {}).get("before"),
        "questions": count,
        "seconds": seconds,
        "questions_per_second": count / seconds,
        "run_em": run_metrics["after"]["jglue"]["exact_match"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--quantize", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--work", default="/tmp/bench-gguf", help="exports and evaluation directories")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/gguf.json)")
    args = parser.parse_args()
    run_dir, work = Path(args.run), Path(args.work)
    config = str(run_dir / "config.yaml")
    run_metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    rows = []

    merged = work / "merged"
    run([*CLI, "export", str(run_dir), "--merge", "--overwrite", "--output", str(merged)])
    hf = work / "eval-hf"
    run([*CLI, "evaluate", "--overwrite", "--output", str(hf), "--config", config, f"model.name={merged}"] + COMMON)
    size = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
    rows.append({"variant": "merged safetensors, this tool (hf)", "bytes": size, **evaluated(hf, run_metrics)})

    for quant in args.quantize:
        export = work / f"gguf-{quant}"
        run(
            [
                *CLI,
                "export",
                str(run_dir),
                "--format",
                "gguf",
                "--quantize",
                quant,
                "--overwrite",
                "--output",
                str(export),
            ]
        )
        (gguf,) = export.glob("*.gguf")
        out = work / f"eval-llama-{quant}"
        overrides = [f"model.gguf_file={gguf.resolve()}", "eval.backend=llama_cpp"] + COMMON
        run([*CLI, "evaluate", "--overwrite", "--output", str(out), "--config", config] + overrides)
        rows.append(
            {"variant": f"GGUF {quant}, llama.cpp", "bytes": gguf.stat().st_size, **evaluated(out, run_metrics)}
        )

    harness.print_table(
        rows,
        [
            ("variant", "variant"),
            ("MiB", lambda r: r["bytes"] / 2**20, ".1f"),
            ("EM (greedy)", "em", ".2f"),
            ("± SE", "em_se", ".2f"),
            ("F1", "f1", ".2f"),
            ("questions", "questions"),
            ("seconds", "seconds", ".1f"),
            ("questions/s", "questions_per_second", ".2f"),
            ("the run's own EM (its decoding)", "run_em", ".2f"),
        ],
    )
    harness.write_result("gguf", rows, out=args.out, packages=("llama_cpp_python", "gguf"), run=str(run_dir))


if __name__ == "__main__":
    main()
