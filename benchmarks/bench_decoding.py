"""Decoding modes on the same run and the same questions: EM/F1, seconds, and each mode paired against the
first (ΔEM with its passage-bootstrap interval, McNemar's p), plus how many answers each mode changed.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_decoding.py --run runs/gemma-3-270m \
        --modes extractive span [--questions N] [--out benchmarks/results/decoding.json]

The model runs in the run's evaluation dtype (`eval.dtype`). The questions are the run's own evaluation
questions (its predictions-after.jsonl ids, in order), so the numbers line up with its metrics.json;
`--questions N` takes the first N of them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import harness
import torch

from jsquad_lora.data.select import load_questions
from jsquad_lora.evaluate.loop import evaluate
from jsquad_lora.generate.decoding import DECODING_MODES, decoding_config
from jsquad_lora.report.paired import em_by_id, paired_comparison
from jsquad_lora.tuned.loaded import load_run_model
from jsquad_lora.util.devices import inference_dtype
from jsquad_lora.util.jsonio import read_jsonl_objects as read_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--modes", nargs="+", choices=tuple(DECODING_MODES), default=["extractive", "span"])
    parser.add_argument("--questions", type=int, help="the first N of the run's evaluation questions")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/decoding.json)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    run = load_run_model(Path(args.run))
    cfg = run.cfg
    run.model.to(getattr(torch, inference_dtype(cfg.eval.dtype, cfg.model.dtype)))  # as the run evaluated
    ids = [row["id"] for row in read_jsonl(Path(args.run) / "predictions-after.jsonl")][: args.questions]
    by_id = {q.id: q for q in load_questions(cfg)[1]}
    questions = [by_id[i] for i in ids]
    rows, em = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            out = Path(tmp) / f"{mode}.jsonl"
            with harness.Timer() as timer:
                result = evaluate(
                    run.model,
                    run.tokenizer,
                    questions,
                    run.render,
                    decoding_config(cfg, mode),
                    cfg.model.max_length,
                    out,
                    progress=False,
                    overlap=cfg.model.window_overlap,
                    window_tokens=cfg.model.window_tokens,
                )
            predictions = {r["id"]: r["prediction"] for r in read_jsonl(out)}
            em[mode] = em_by_id(read_jsonl(out))
            first = args.modes[0]
            row = {
                "mode": mode,
                "questions": len(questions),
                "em": result.scores["jglue"]["exact_match"],
                "f1": result.scores["jglue"]["f1"],
                "seconds": timer.seconds,
                "answers_changed": None if mode == first else sum(predictions[i] != rows[0]["_p"][i] for i in ids),
                "_p": predictions,
            }
            if mode != first:
                passage_of = {q.id: q.context for q in questions}
                row["vs_first"] = paired_comparison(em[first], em[mode], passage_of)
            rows.append(row)
    for row in rows:
        row.pop("_p")
    harness.print_table(
        rows,
        [
            ("mode", "mode", ""),
            ("EM", "em", ".2f"),
            ("F1", "f1", ".2f"),
            ("s", "seconds", ".1f"),
            ("changed", "answers_changed", ""),
            ("ΔEM vs first", lambda r: r.get("vs_first", {}).get("delta"), "+.2f"),
            ("95% CI", lambda r: r.get("vs_first", {}).get("ci95"), ""),
            ("McNemar p", lambda r: r.get("vs_first", {}).get("mcnemar_p"), ".2g"),
        ],
    )
    print(json.dumps([{k: v for k, v in r.items()} for r in rows], ensure_ascii=False)[:2000])
    harness.write_result("decoding", rows, out=args.out, run=args.run)


if __name__ == "__main__":
    main()
