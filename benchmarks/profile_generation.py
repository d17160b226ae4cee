"""Where batched greedy generation's time goes: the prompt prefill (`prefix_cache.batch_inputs`)
against `generate` (decode steps), the prompt tokens the prefill ran, and the tokens the screened
float32 head kept per step. The model: Gemma 3 270M with the adapter bench_vs_peers.py trained
(its first row, peers/vs_trl.py), the same first dev questions, greedy, float32 unless told.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/profile_generation.py [--dtype float32] [--batch 32]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import harness
import torch
from peers import common

from jsquad_lora.generate import greedy as generation
from jsquad_lora.generate import screened_head
from jsquad_lora.generate.decoding import DecodingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--questions", type=int, default=120)
    parser.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench-vs-peers")
    parser.add_argument("--no-screen", action="store_true", help="the plain float32 head")
    args = parser.parse_args()
    bench = argparse.Namespace(
        gpu=False, train_questions=96, dev_questions=args.questions, max_new_tokens=20, work=args.work
    )
    cfg, model, tokenizer = common.eval_model(bench, args.dtype, merge=True)
    _, prompts, passages = common.dev_prompts(bench, cfg, tokenizer)
    decoding = DecodingConfig(max_new_tokens=20, batch_size=args.batch, mode="greedy", screen_head=not args.no_screen)
    generation.generate_answers(model, tokenizer, prompts[:4], passages[:4], decoding)  # warm-up

    spent = {"prefill": 0.0, "generate": 0.0}
    counts = {"prefill_tokens": 0, "decode_steps": 0, "decode_row_steps": 0}
    kept: list[int] = []

    def timed(name, fn):
        def run(*a, **k):
            with harness.Timer() as timer:
                out = fn(*a, **k)
            spent[name] += timer.seconds
            return out

        return run

    plain_inputs, plain_greedy, plain_head = (
        generation.batch_inputs,
        generation._greedy,
        screened_head.ScreenedHead.forward,
    )

    def inputs(model, encoded, batch, *a, **k):
        groups: dict[tuple, list[int]] = {}  # each shared prefix once, then every prompt's rest but its last token
        for i, n in batch:
            groups.setdefault(tuple(encoded[i][:n]), []).append(i)
        counts["prefill_tokens"] += sum(
            len(p) + sum(len(encoded[i]) - 1 - len(p) for i in rows) for p, rows in groups.items()
        )
        return plain_inputs(model, encoded, batch, *a, **k)

    def greedy(model, batch_inputs, *a, **k):
        out = plain_greedy(model, batch_inputs, *a, **k)
        steps = out.shape[1] - batch_inputs["input_ids"].shape[1]
        counts["decode_steps"] += steps
        counts["decode_row_steps"] += steps * out.shape[0]
        return out

    def head(self, hidden):
        logits = plain_head(self, hidden)
        kept.append(int(torch.isfinite(logits.reshape(-1, logits.shape[-1])).any(0).sum()))
        return logits

    generation.batch_inputs = timed("prefill", inputs)
    generation._greedy = timed("generate", greedy)
    screened_head.ScreenedHead.forward = head
    with harness.Timer() as timer:
        generation.generate_answers(model, tokenizer, prompts, passages, decoding)
    total = timer.seconds
    print(harness.describe())
    print(f"{len(prompts)} questions, {args.dtype}, batch {args.batch}: {total:.1f} s ({len(prompts) / total:.2f} q/s)")
    print(f"  prefill  {spent['prefill']:.1f} s for {counts['prefill_tokens']} prompt tokens")
    print(
        f"  generate {spent['generate']:.1f} s: {counts['decode_steps']} decode steps, "
        f"{counts['decode_row_steps']} row-steps"
    )
    if kept:
        print(f"  screened head: tokens kept per step median {statistics.median(kept):.0f}, max {max(kept)}")
    # the floor under the prefill: its matmul FLOPs at this CPU's matmul rate for the prefill's shapes
    body = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers" in n)
    a, w = torch.randn(300, 640, dtype=model.dtype), torch.randn(2048, 640, dtype=model.dtype)
    for _ in range(3):
        a @ w.T
    with harness.Timer() as timer:
        for _ in range(50):
            a @ w.T
    rate = 2 * 300 * 640 * 2048 * 50 / timer.seconds
    floor = 2 * body * counts["prefill_tokens"] / rate
    print(
        f"  matmul rate {rate / 1e9:.0f} GFLOPS ([300, 640] x [640, 2048], {args.dtype}): the prefill's "
        f"{2 * body / 1e9:.3f} GFLOP per token take >= {floor:.1f} s in matmuls alone"
    )


if __name__ == "__main__":
    main()
