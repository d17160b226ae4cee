"""Benchmark 2: training batches. Padding share over a whole epoch, non-padding tokens/second and
training examples/second of forward+backward+step, for our batchings (length-grouped,
padding-free, shared-prefix) vs naive pad-to-longest in random order. Goal: padding <= 5 %.
Examples/second is the fair comparison: a shared-prefix row holds all questions of a passage and
computes their common prompt once, so it needs fewer tokens per example. Each mode runs the same
number of examples per step (shared-prefix: rows of one passage, as many rows as give about
that many examples).

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_batching.py [--steps 30]
"""

from __future__ import annotations

import argparse
import time

import harness
import torch

from jsquad_lora.config.load import load_config
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.encoding.collators import AnswerOnlyCollator, FlatteningCollator, PaddingMeter, SharedPrefixCollator
from jsquad_lora.encoding.packing import share_prefixes
from jsquad_lora.encoding.tokens import encode_train_set
from jsquad_lora.model.sources.tiny import build_char_tokenizer, build_tiny_model
from jsquad_lora.prompts.templates import render_prompt
from jsquad_lora.train.batch_order import EpochBatchOrder

MODES = {
    "random (naive)": "random",
    "length_grouped": "length_grouped",
    "padding_free": "padding_free",
    "shared_prefix": "shared_prefix",
}


def batches(items, batch_size, order, mode):
    collator = PaddingMeter(
        {"padding_free": FlatteningCollator, "shared_prefix": lambda: SharedPrefixCollator(0)}.get(
            mode, lambda: AnswerOnlyCollator(0)
        )()
    )
    indices = list(order)
    for i in range(0, len(indices), batch_size):
        chosen = indices[i : i + batch_size]
        yield collator([vars(items[j]) for j in chosen]), collator, chosen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per mode")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="examples per step (shared-prefix: rows holding about that many)"
    )
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/batching.json)")
    parser.add_argument("--modes", nargs="+", choices=list(MODES.values()), default=list(MODES.values()))
    parser.add_argument(
        "--no-row-cap", action="store_true", help="shared-prefix rows without run.py's 2 x max_length cap"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config("tiny-cpu")
    questions = load_split(resolve_split(None, cfg.data.train_split)).questions
    tokenizer = build_char_tokenizer(
        [q.context + q.question + "".join(q.answers) for q in questions] + [render_prompt(questions[0])]
    )
    examples, _ = encode_train_set(questions, render_prompt, tokenizer, cfg.model.max_length)
    cap = None if args.no_row_cap else 2 * cfg.model.max_length  # as run.py
    shared = share_prefixes(examples, [q.context for q in questions], max_tokens=cap)
    per_row = len(examples) / len(shared)
    rows = []
    for name, mode in MODES.items():
        if mode not in args.modes:
            continue
        items = shared if mode == "shared_prefix" else examples
        batch_size = max(1, round(args.batch_size / per_row)) if mode == "shared_prefix" else args.batch_size
        lengths = [len(e.input_ids) for e in items]
        order = EpochBatchOrder(lengths, batch_size, seed=0, grouped=mode in ("length_grouped", "shared_prefix"))
        collator = None
        for _, collator, _ in batches(items, batch_size, order, mode):
            pass
        epoch_padding = collator.padding_fraction
        torch.manual_seed(0)
        model = build_tiny_model(cfg.model, tokenizer)
        model.config.use_cache = False  # as in training: the packed masks need it
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        real, done, start, step = 0, 0, None, 0
        for batch, _, chosen in batches(items, batch_size, order, mode):
            if step == 3:  # warm-up steps are not timed
                start, real, done = time.perf_counter(), 0, 0
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            real += sum(len(items[j].input_ids) for j in chosen)  # non-padding tokens
            done += sum(max(items[j].segments) for j in chosen) if mode == "shared_prefix" else len(chosen)  # examples
            step += 1
            if step == args.steps + 3:
                break
        seconds = time.perf_counter() - start
        rows.append(
            {
                "batching": name,
                "padding_fraction": epoch_padding,
                "tokens_per_second": real / seconds,
                "examples_per_second": done / seconds,
                "batch_size": batch_size,
                "steps": args.steps,
                "seconds": seconds,
            }
        )
    print(harness.describe())
    harness.print_table(
        rows,
        [
            ("batching", "batching"),
            ("padding", lambda r: f"{100 * r['padding_fraction']:.2f} %"),
            ("non-padding tokens/s", "tokens_per_second", ",.0f"),
            ("examples/s", "examples_per_second", ".1f"),
        ],
    )
    harness.write_result(
        "batching",
        rows,
        out=args.out,
        title="training batches",
        examples_per_step=args.batch_size,
        model="tiny-cpu shape",
        shared_prefix_row_cap=cap,
    )


if __name__ == "__main__":
    main()
