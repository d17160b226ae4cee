"""This tool against the tools people would use instead, on the same model, data, prompt and machine.

Training vs TRL's SFTTrainer: peers/vs_trl.py. Evaluation vs lm-evaluation-harness and the
one-at-a-time `generate` loop: peers/vs_lm_eval.py. What both share (recipe, data, model loading,
the GPU rows' model, rates and ratios): peers/common.py. This file runs the rows, every row in its
own subprocess on the CPU (CUDA hidden; its peak RSS is the row's memory), none warmed up; then
prints a table and writes benchmarks/results/peers.json (harness.py's schema) with `train_ratio`
and `eval_ratio` (ours / theirs). With a CUDA GPU (or `--gpu-rows smoke`) it adds the GPU rows.

Needs TRL and lm-eval in the same environment (the `peers` extra; lm-eval is kept out of .venv):

    python3 -m venv .venv-peers && .venv-peers/bin/pip install -q torch==2.13.0 && \\
        .venv-peers/bin/pip install -q -e '.[peers]' && \\
        JSQUAD_DIR=../shared/jsquad .venv-peers/bin/python benchmarks/bench_vs_peers.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import harness
from peers import common, vs_lm_eval, vs_trl

ROWS = {
    "prepare-model": common.row_prepare_gpu_model,  # GPU rows only: their model, before their other rows
    **vs_trl.ROWS,
    **vs_lm_eval.ROWS,
}
NEEDS = {**vs_trl.NEEDS, **vs_lm_eval.NEEDS}
CPU_ROWS = [name for name in ROWS if name != "prepare-model"]
#: on one CUDA GPU: rinna-3.6B shape, the rinna-3.6b-best recipe (bf16 weights, all-linear rsLoRA r=16,
#: padding-free batches of 16, eval batch 64); the one-at-a-time loop is left out there
GPU_ROWS = ["gpu-" + name for name in ROWS if name not in vs_lm_eval.CPU_ONLY]


def _run_row(name: str, args) -> dict:
    """One row in a fresh process (the row reports its own peak RSS); its wall time."""
    out = args.work / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--row", name, *_pass_through(args)]
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    # CPU rows never see a GPU; GPU rows see it (or not, in a CPU smoke run)
    on_gpu = name.startswith("gpu-") and args.gpu_rows == "on"
    env = os.environ if on_gpu else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    with harness.Timer() as timer:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL if not args.verbose else None, stderr=subprocess.PIPE, env=env
        )
        _, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"row {name} failed (exit {proc.returncode}):\n{stderr.decode()[-4000:]}")
    row = json.loads(out.read_text())
    row.update(name=name, process_seconds=timer.seconds)
    return row


def _pass_through(args) -> list[str]:
    return [
        f"--train-questions={args.train_questions}",
        f"--dev-questions={args.dev_questions}",
        f"--em-questions={args.em_questions}",
        f"--max-new-tokens={args.max_new_tokens}",
        f"--trl-batch={args.trl_batch}",
        f"--lm-eval-batch={args.lm_eval_batch}",
        f"--loop-questions={args.loop_questions}",
        f"--work={args.work}",
        f"--gpu-shape={args.gpu_shape}",
        f"--gpu-rows={args.gpu_rows}",
        *(["--profile-trl"] if args.profile_trl else []),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-questions", type=int, default=96, help="first N questions of the training sample")
    parser.add_argument("--dev-questions", type=int, default=120, help="first M dev questions for the eval rows")
    parser.add_argument("--em-questions", type=int, default=48, help="dev questions for each training row's EM check")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="the default recipe's eval.max_new_tokens")
    parser.add_argument("--trl-batch", type=int, default=8, help="TRL's per-device batch (examples)")
    parser.add_argument("--loop-questions", type=int, default=40, help="dev questions for the one-at-a-time loop")
    parser.add_argument("--lm-eval-batch", type=int, default=16, help="lm_eval's --batch_size")
    parser.add_argument("--rows", default=",".join(CPU_ROWS), help="CPU rows, a subset of: " + ", ".join(CPU_ROWS))
    parser.add_argument(
        "--gpu-rows",
        choices=("auto", "on", "off", "smoke"),
        default="auto",
        help="the rows on one CUDA GPU (rinna-3.6B shape): auto = where torch sees a GPU; "
        "smoke = run them on the CPU (with --gpu-shape tiny) to check the plumbing",
    )
    parser.add_argument("--gpu-shape", choices=("rinna-3.6b", "tiny"), default="rinna-3.6b")
    parser.add_argument("--profile-trl", action="store_true", help="profile TRL's second step (table in the row)")
    parser.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench-vs-peers", help="scratch directory")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/peers.json)")
    parser.add_argument("--verbose", action="store_true", help="show each row's own output")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work.resolve()
    if args.row:  # a child: one row, its result as JSON in the scratch directory
        args.gpu = args.row.startswith("gpu-")
        row = ROWS[args.row.removeprefix("gpu-")](args, args.work)
        row.update(harness.peak_memory())
        (args.work / f"{args.row}.json").write_text(json.dumps(row))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    if args.gpu_rows == "auto":
        args.gpu_rows = "on" if torch.cuda.is_available() else "off"
    names = [n for n in args.rows.split(",") if n] + (GPU_ROWS if args.gpu_rows in ("on", "smoke") else [])
    unknown = [n for n in names if n.removeprefix("gpu-") not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: the rows are {', '.join(CPU_ROWS)} (gpu- before one: a GPU row)")
    common.require(*sorted({m for n in names for m in NEEDS.get(n.removeprefix("gpu-"), ())}))  # before any row
    with harness.Timer() as total:
        rows = [_run_row(name, args) for name in names]
    if args.gpu_rows == "on":
        gpu_rows = f"{torch.cuda.get_device_name(0)}: rinna-3.6b-best recipe on {args.gpu_shape}-shaped random weights"
    elif args.gpu_rows == "smoke":
        gpu_rows = f"smoke run on the CPU ({args.gpu_shape} shape): plumbing only, not GPU numbers"
    else:
        gpu_rows = "empty: no CUDA GPU on this machine (torch.cuda.is_available() is False)"
    rows = [r for r in rows if r["tool"] != "set-up"]
    by = {r["name"]: r for r in rows}
    common.add_rates(rows)
    vs_lm_eval.compare(rows, by)
    ratios = {**vs_trl.ratios(by), **vs_lm_eval.ratios(by)}
    print(harness.describe())
    _print_table(rows)
    print(
        f"train_ratio {ratios['train_ratio']}, eval_ratio {ratios['eval_ratio']} "
        f"(bf16 {ratios['eval_ratio_bfloat16']}, vs HF loop {ratios['eval_ratio_vs_hf_loop']})"
    )
    print(
        f"GPU rows: {gpu_rows}; gpu_train_ratio {ratios['gpu_train_ratio']}, "
        f"gpu_eval_ratio {ratios['gpu_eval_ratio']} (bf16 {ratios['gpu_eval_ratio_bfloat16']})"
    )
    harness.write_result(
        "peers",
        rows,
        out=args.out,
        title="this tool vs TRL SFTTrainer and lm-evaluation-harness",
        gpu_rows=gpu_rows,
        train_questions=args.train_questions,
        dev_questions=args.dev_questions,
        max_new_tokens=args.max_new_tokens,
        **ratios,
        total_seconds=total.seconds,
    )


def _print_table(rows: list[dict]) -> None:
    def rate(r: dict) -> str:
        if "examples_per_second" in r:
            return f"{r['examples_per_second']:.2f} ex/s ({r['examples']} in {r['seconds']:.0f} s)"
        return f"{r['questions_per_second']:.2f} q/s ({r['questions']} in {r['seconds']:.0f} s)"

    def quality(r: dict) -> str | None:
        if "examples_per_second" in r:
            return f"loss {r['train_loss']:.3f}, dev EM {r['dev_em']:.1f}"
        equal = r.get("answers_equal_to_lm_eval_float32")
        return f"{equal}/{r['questions']} = lm_eval float32" if equal is not None else None

    harness.print_table(
        rows,
        [
            ("row", "name"),
            ("tool", "tool"),
            ("setting", "setting"),
            ("precision", "precision"),
            ("throughput", rate),
            ("tokens/s", "example_tokens_per_second", ".0f"),
            ("peak RSS", lambda r: f"{r['peak_rss_mib']:.0f} MiB"),
            ("quality / answers", quality),
        ],
    )


if __name__ == "__main__":
    main()
