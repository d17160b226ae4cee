"""Benchmark 1: evaluation throughput, batched (with and without running each passage's shared
prompt prefix once) vs one question at a time, same model, same questions; the predictions
must be identical. Goal: >= 5x on 2 CPU cores.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_eval.py [--run runs/tiny-cpu] [--questions 500]

With --run, the run's trained model (base + adapter) answers; without, a freshly built tiny
model with random weights (which never stops early: the worst case for decoding).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import harness
import torch

from jsquad_lora.config.load import load_config
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.evaluate.loop import build_prompts
from jsquad_lora.generate.decoding import DecodingConfig
from jsquad_lora.generate.greedy import generate_answers
from jsquad_lora.model.lora import load_trained
from jsquad_lora.model.source import base_model_and_tokenizer
from jsquad_lora.prompts.fewshot import make_renderer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", help="a finished run directory (default: a random tiny model)")
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decoding", choices=("greedy", "extractive"), default="greedy")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/eval.json)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.run:
        cfg = load_config(Path(args.run) / "config.yaml")
        run_dir = Path(args.run)
    else:
        cfg = load_config("tiny-cpu")
        run_dir = Path("runs/bench-random-tiny")  # built once, not committed (runs/ is ignored)
    train = load_split(resolve_split(cfg.data.dir, cfg.data.train_split)).questions
    questions = load_split(resolve_split(cfg.data.dir, cfg.data.eval_split)).questions[: args.questions]
    model, tokenizer = base_model_and_tokenizer(cfg, run_dir, train)
    if (run_dir / "adapter").exists():
        model = load_trained(model, run_dir / "adapter", cfg.lora.enabled)
    render = make_renderer(cfg, tokenizer, train)
    prompts, passages, _ = build_prompts(questions, render, tokenizer, cfg.model.max_length - cfg.eval.max_new_tokens)
    rows, answers = [], {}
    for batch_size, share in ((1, False), (args.batch_size, False), (args.batch_size, True)):
        decoding = DecodingConfig(
            max_new_tokens=cfg.eval.max_new_tokens, batch_size=batch_size, mode=args.decoding, share_prefix=share
        )
        with harness.Timer() as timer:
            answers[batch_size, share] = generate_answers(model, tokenizer, prompts, passages, decoding)
        rows.append(
            {
                "batch_size": batch_size,
                "share_prefix": share,
                "seconds": timer.seconds,
                "questions_per_second": len(prompts) / timer.seconds,
            }
        )
    identical = all(a == answers[1, False] for a in answers.values())
    assert identical, "batched predictions differ from one-at-a-time predictions"
    ratio = rows[-1]["questions_per_second"] / rows[0]["questions_per_second"]
    print(harness.describe())
    harness.print_table(
        rows,
        [
            ("batch size", "batch_size"),
            ("shared prefix", "share_prefix"),
            ("seconds", "seconds", ".1f"),
            ("questions/s", "questions_per_second", ".2f"),
            ("speed-up", lambda r: f"{r['questions_per_second'] / rows[0]['questions_per_second']:.2f}x"),
        ],
    )
    print(f"speed-up {ratio:.2f}x; predictions identical: {identical}")
    harness.write_result(
        "eval",
        rows,
        out=args.out,
        title="evaluation batched vs one at a time",
        model=str(args.run or "random tiny (tiny-cpu shape)"),
        decoding=args.decoding,
        questions=len(prompts),
        speedup=ratio,
        identical_predictions=identical,
    )


if __name__ == "__main__":
    main()
