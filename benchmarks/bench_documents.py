"""Benchmark: a run on long documents and on questions without an answer, against the same questions asked
of their own passages, paired (issue 25).

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_documents.py --run runs/abstain \
        [--baseline runs/gemma-3-270m] [--every 2] [--work /tmp/bench-documents]

Every step is a command a user runs (printed as it runs):
1. `data build-long` and `data build-unanswerable` of the dev set (seed 0);
2. `export --merge` of the run;
3. `evaluate` of the merged model (eval.dtype=auto, the run's decoding) on the same questions twice: each
   with its own passage, and inside its long document (read in windows). The questions: every `--every`-th
   question of the run's eval_ids.json (the default's 1,001-question dev sample) that the long set kept, in
   the long set's order (`data.eval_ids`).
The table pairs the two (ΔEM with its passage bootstrap interval and McNemar's p, `report.paired`) and gives
the time per question and per window read. Where the run was evaluated on the unanswerable set, its HasAns /
NoAns scores are read from its metrics.json, and its HasAns EM is paired with `--baseline`'s EM (the same
recipe without negatives) on the same questions.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import harness

from jsquad_lora.report.paired import em_by_id, paired_comparison

CLI = [sys.executable, "-m", "jsquad_lora.cli"]
DEV = "valid-v1.3.json"


def run(argv: list[str]) -> None:
    print("$ jsquad-lora " + shlex.join(argv[len(CLI) :]), flush=True)
    subprocess.run(argv, check=True)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--baseline", help="a run of the same recipe without negatives (HasAns paired with it)")
    parser.add_argument("--ids", help="question ids (default: the baseline's, else the run's eval_ids.json)")
    parser.add_argument("--every", type=int, default=2, help="every k-th kept question (default 2)")
    parser.add_argument("--work", default="/tmp/bench-documents")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/documents.json)")
    args = parser.parse_args()
    run_dir, work = Path(args.run), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dev = Path(os.environ.get("JSQUAD_DIR", "../shared/jsquad")) / DEV
    long_file, unanswerable_file = work / "long-dev.json", work / "unanswerable-dev.json"
    run([*CLI, "data", "build-long", str(dev), "--output", str(long_file)])
    run([*CLI, "data", "build-unanswerable", str(dev), "--output", str(unanswerable_file)])

    from jsquad_lora.data.jsquad import load_split

    sample = Path(args.ids) if args.ids else Path(args.baseline or run_dir) / "eval_ids.json"
    wanted = set(json.loads(sample.read_text(encoding="utf-8")))
    kept = [q.id for q in load_split(long_file).questions if q.id in wanted][:: args.every]
    ids = work / "ids.json"
    ids.write_text(json.dumps(kept), encoding="utf-8")

    merged = work / "merged"
    run([*CLI, "export", str(run_dir), "--merge", "--overwrite", "--output", str(merged)])
    common = [
        "--config",
        str(run_dir / "config.yaml"),
        f"model.name={merged}",
        "eval.before=true",
        "eval.after=false",
        "eval.side_check=false",
        "data.eval_sample=null",
        f"data.eval_ids={ids}",
    ]
    found = {}
    for name, source in (("own passages", str(dev)), ("long documents", str(long_file))):
        out = work / ("eval-" + name.split()[0])
        run([*CLI, "evaluate", "--overwrite", "--output", str(out), *common, f"data.eval={source}"])
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        rows = rows_of(out / "predictions-before.jsonl")
        found[name] = (metrics, rows)

    passages = {q.id: q.context for q in load_split(dev).questions}
    short_rows, long_rows = found["own passages"][1], found["long documents"][1]
    paired = paired_comparison(em_by_id(short_rows), em_by_id(long_rows), passages)
    table = []
    for name, (metrics, rows) in found.items():
        seconds = metrics["eval_before"]["seconds"]
        windows = sum(r.get("windows", 1) for r in rows)
        table.append(
            {
                "set": name,
                "questions": len(rows),
                "em": metrics["before"]["jglue"]["exact_match"],
                "f1": metrics["before"]["jglue"]["f1"],
                "windows_read": windows,
                "abstained": sum(bool(r.get("abstained")) for r in rows),
                "seconds": seconds,
                "seconds_per_question": seconds / len(rows),
                "seconds_per_window": seconds / windows,
            }
        )
    ratio = table[1]["em"] / table[0]["em"] if table[0]["em"] else None
    harness.print_table(
        table,
        [
            ("set", "set"),
            ("questions", "questions"),
            ("EM", "em", ".2f"),
            ("F1", "f1", ".2f"),
            ("windows read", "windows_read"),
            ("abstained", "abstained"),
            ("s / question", "seconds_per_question", ".3f"),
            ("s / window", "seconds_per_window", ".3f"),
        ],
    )
    print(
        f"long / own-passage EM: {ratio:.3f}; paired ΔEM {paired['delta']:+.2f} {paired['ci95']}, "
        f"McNemar p {paired['mcnemar_p']:.3g}"
    )
    print(
        f"time per long question / (short time per question x windows per question): "
        f"{table[1]['seconds_per_window'] / table[0]['seconds_per_question']:.2f}"
    )

    extra: dict = {"run": str(run_dir), "paired_long_vs_own": paired, "long_over_own_em": ratio}
    run_metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    after = run_metrics.get("after", {})
    if "no_ans" in after:
        extra["unanswerable"] = {k: after[k] for k in ("has_ans", "no_ans", "jglue") if k in after}
        extra["abstention"] = run_metrics.get("abstention")
        print(
            f"unanswerable set: HasAns EM {after['has_ans']['exact_match']:.2f} ({after['has_ans']['count']}), "
            f"NoAns {after['no_ans']['exact_match']:.2f} ({after['no_ans']['count']})"
        )
        if args.baseline:
            mine = em_by_id(rows_of(run_dir / "predictions-after.jsonl"))
            base = em_by_id(rows_of(Path(args.baseline) / "predictions-after.jsonl"))
            has_ans = {k: v for k, v in mine.items() if not k.endswith("#noans")}
            extra["has_ans_vs_baseline"] = paired_comparison(base, has_ans, passages)
            p = extra["has_ans_vs_baseline"]
            print(
                f"HasAns vs {args.baseline}: {p['em_a']:.2f} → {p['em_b']:.2f}, ΔEM {p['delta']:+.2f} "
                f"{p['ci95']}, McNemar p {p['mcnemar_p']:.3g} ({p['questions']} questions)"
            )
    harness.write_result("documents", table, out=args.out, **extra)


if __name__ == "__main__":
    main()
