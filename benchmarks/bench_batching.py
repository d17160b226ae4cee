"""Benchmark 2: training batches. Padding share over a whole epoch and non-padding tokens/second
of forward+backward+step, for our batching (length-grouped, padding-free) vs naive pad-to-longest
in random order. Goal: padding <= 5 %.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_batching.py [--steps 30]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

from jsquad_lora.batching import AnswerOnlyCollator, FlatteningCollator, encode_train_set, padding_fraction
from jsquad_lora.config import load_config
from jsquad_lora.data import load_split, resolve_split
from jsquad_lora.modeling import build_char_tokenizer, build_tiny_model
from jsquad_lora.prompts import render_prompt
from jsquad_lora.training import EpochBatchOrder

MODES = {"random (naive)": ("random", False), "length_grouped": ("length_grouped", False), "padding_free": ("random", True)}


def batches(examples, batch_size, order, flat):
    collator = FlatteningCollator() if flat else AnswerOnlyCollator(0)
    indices = list(order)
    for i in range(0, len(indices), batch_size):
        feats = [{"input_ids": examples[j].input_ids, "labels": examples[j].labels} for j in indices[i:i + batch_size]]
        yield collator(feats), collator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per mode")
    parser.add_argument("--out", default="benchmarks/results/batching.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(None)
    questions = load_split(resolve_split(None, cfg.data.train_split)).questions
    tokenizer = build_char_tokenizer([q.context + q.question + "".join(q.answers) for q in questions] + [render_prompt(questions[0])])
    examples, _ = encode_train_set(questions, render_prompt, tokenizer, cfg.model.max_length)
    lengths = [len(e.input_ids) for e in examples]
    rows = []
    for name, (strategy, flat) in MODES.items():
        order = EpochBatchOrder(lengths, cfg.train.batch_size, seed=0, grouped=strategy == "length_grouped")
        collator = None
        for _, collator in batches(examples, cfg.train.batch_size, order, flat):
            pass
        epoch_padding = padding_fraction(collator)
        torch.manual_seed(0)
        model = build_tiny_model(cfg.model, tokenizer)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        real, start, step = 0, None, 0
        for batch, _ in batches(examples, cfg.train.batch_size, order, flat):
            if step == 3:  # warm-up steps are not timed
                start, real = time.perf_counter(), 0
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            real += int((batch["labels"] != -100).numel() if flat else batch["attention_mask"].sum())
            step += 1
            if step == args.steps + 3:
                break
        seconds = time.perf_counter() - start
        rows.append({"batching": name, "padding_fraction": epoch_padding, "tokens_per_second": real / seconds,
                     "steps": args.steps, "seconds": seconds})
    print(f"{'batching':<18}{'padding %':>10}{'tokens/s':>12}")
    for r in rows:
        print(f"{r['batching']:<18}{100 * r['padding_fraction']:>10.2f}{r['tokens_per_second']:>12,.0f}")
    result = {"benchmark": "training batches", "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "batch_size": cfg.train.batch_size, "model": "tiny-cpu shape", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
