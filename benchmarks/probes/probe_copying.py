"""Probe: can a trained run's model copy from its passage? (the skill extractive QA rests on)

Two measurements on 200 random dev passages / 300 random questions of each split:
- copy: the prompt's question is replaced by a verbatim 30-character chunk of the passage; the
  loss (nats per character) at offsets 1..29 into that chunk. A model that copies (an induction
  head: find the earlier occurrence, predict what followed it) falls towards 0 after the first
  few characters; one that does not stays at its unigram/bigram level at every offset.
- answers: the loss of the gold answer's first character, of its remaining characters, and of EOS,
  and how often the first character is the model's top choice, on training and dev questions.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/probes/probe_copying.py --run runs/tiny-cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from jsquad_lora.config.load import load_config
from jsquad_lora.data.select import load_questions
from jsquad_lora.encoding.tokens import encode_train_example, prompt_ids
from jsquad_lora.model.lora import load_trained
from jsquad_lora.model.source import base_model_and_tokenizer
from jsquad_lora.prompts.fewshot import make_renderer

CHUNK = 30


def _log_probs(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return F.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def copy_losses(model, tokenizer, render, questions, rng: random.Random, n: int = 200) -> list[float]:
    """Mean loss at each offset 1..CHUNK-1 of a passage chunk repeated as the question."""
    totals, count = [0.0] * CHUNK, 0
    for q in rng.sample([q for q in questions if len(q.context) >= CHUNK + 10], n):
        start = rng.randrange(0, len(q.context) - CHUNK)
        chunk = q.context[start : start + CHUNK]
        ids = prompt_ids(tokenizer, render(dataclasses.replace(q, question=chunk)))
        chunk_ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        at = max(i for i in range(len(ids) - len(chunk_ids) + 1) if ids[i : i + len(chunk_ids)] == chunk_ids)
        logp = _log_probs(model, ids)
        for k in range(1, len(chunk_ids)):
            totals[k] -= logp[at + k - 1, ids[at + k]].item()
        count += 1
    return [t / count for t in totals]


def answer_losses(model, tokenizer, render, questions, max_length: int) -> dict:
    first = rest = end = 0.0
    rest_count = top1 = 0
    for q in questions:
        example, _ = encode_train_example(q, render, tokenizer, max_length)
        logp = _log_probs(model, example.input_ids)[:-1]
        targets = example.labels[1:]
        where = [i for i, t in enumerate(targets) if t != -100]
        losses = [-logp[i, targets[i]].item() for i in where]
        first, end, rest = first + losses[0], end + losses[-1], rest + sum(losses[1:-1])
        rest_count += len(losses) - 2
        top1 += int(logp[where[0]].argmax().item() == targets[where[0]])
    n = len(questions)
    return {
        "first_char_loss": first / n,
        "first_char_top1": top1 / n,
        "continuation_loss": rest / max(1, rest_count),
        "eos_loss": end / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    run_dir = Path(args.run)
    cfg = load_config(run_dir / "config.yaml")
    train, dev = load_questions(cfg)
    model, tokenizer = base_model_and_tokenizer(cfg, run_dir, train)
    if (run_dir / "adapter").exists():
        model = load_trained(model, run_dir / "adapter", cfg.lora.enabled)
    model.eval()
    render = make_renderer(cfg, tokenizer, train)
    rng = random.Random(args.seed)
    losses = copy_losses(model, tokenizer, render, dev, rng)
    print("copy: loss (nats/char) at offset k into a repeated 30-character passage chunk")
    print("  " + "  ".join(f"k={k}: {losses[k]:.2f}" for k in (1, 2, 3, 5, 8, 12, 20, 29)))
    for name, split in (("train", train), ("dev", dev)):
        r = answer_losses(model, tokenizer, render, rng.sample(split, 300), cfg.model.max_length)
        print(
            f"answers ({name}, 300): first character {r['first_char_loss']:.2f} nats "
            f"(top-1 {100 * r['first_char_top1']:.0f} %), "
            f"continuation {r['continuation_loss']:.2f} nats/char, EOS {r['eos_loss']:.2f} nats"
        )


if __name__ == "__main__":
    main()
