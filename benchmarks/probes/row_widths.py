"""Attention work of the offline default's shared-prefix training rows, with and without the row cap.

Attention costs each batch rows x width² (rows are padded to the widest); this sums it over one
epoch's batches (the training sampler's order) and reports the share of the 5 costliest batches.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/probes/row_widths.py [key=value ...]  # train.batch_size=4
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from jsquad_lora.config.load import load_config
from jsquad_lora.data.augment import cloze_questions
from jsquad_lora.data.select import load_questions
from jsquad_lora.encoding.packing import share_prefixes
from jsquad_lora.encoding.tokens import encode_train_set
from jsquad_lora.model.source import base_model_and_tokenizer
from jsquad_lora.prompts.fewshot import make_renderer
from jsquad_lora.train.batch_order import EpochBatchOrder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for harness.py
import harness  # noqa: E402


def main() -> None:
    cfg = load_config("tiny-cpu", sys.argv[1:])  # the figures README cites are for the tiny model
    train, _ = load_questions(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        _, tokenizer = base_model_and_tokenizer(cfg, Path(tmp), train)
    render = make_renderer(cfg, tokenizer, train)
    questions = list(train) + cloze_questions(train, cfg.train.synthetic_per_passage, cfg.train.seed)
    examples, _ = encode_train_set(questions, render, tokenizer, cfg.model.max_length)
    table = []
    for name, cap in (("uncapped", None), (f"capped at {2 * cfg.model.max_length}", 2 * cfg.model.max_length)):
        rows = share_prefixes(examples, [q.context for q in questions], max_tokens=cap)
        lengths = [len(r.input_ids) for r in rows]
        order = list(EpochBatchOrder(lengths, cfg.train.batch_size, cfg.train.seed, grouped=True))
        work = sorted(
            len(b) * max(b) ** 2
            for b in (
                [lengths[j] for j in order[k : k + cfg.train.batch_size]]
                for k in range(0, len(order), cfg.train.batch_size)
            )
        )
        table.append(
            {
                "rows": name,
                "count": len(rows),
                "widest": max(lengths),
                "work": sum(work) / 1e6,
                "top5": 100 * sum(work[-5:]) / sum(work),
            }
        )
    harness.print_table(
        table,
        [
            ("rows", "rows"),
            ("count", "count"),
            ("widest", "widest"),
            ("rows x width² (M)", "work", ".1f"),
            ("top-5 batches", lambda r: f"{r['top5']:.1f}%"),
        ],
    )


if __name__ == "__main__":
    main()
