"""CPU speed levers of the default recipe, one row each, on the real model (Gemma 3 270M).

Training step (LoRA all-linear r=8, AdamW, batch of real prompts + answers of the test split):
float32 with the LM head at every position (what `model(labels=...)` does) vs at the labelled
positions only (`training.answer_only_loss`), each in float32 and under bfloat16 autocast.
Prefill (the evaluation's compute-bound part): float32 vs bfloat16 weights.
Generation: a LoRA adapter unmerged (peft) vs merged into the weights.
Prints a table and writes benchmarks/results/cpu_levers.json (the harness records the CPU's name and flags).

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_cpu_levers.py [--steps 3] [--batch 8] \
        [--adapter RUN_DIR/adapter]
"""

from __future__ import annotations

import argparse
import copy

import harness
import torch

from jsquad_lora.config.schema import LoraSettings, ModelConfig
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.data.sampling import stratified_sample
from jsquad_lora.encoding.collators import AnswerOnlyCollator
from jsquad_lora.encoding.tokens import encode_train_set
from jsquad_lora.evaluate.loop import build_prompts
from jsquad_lora.generate.decoding import DecodingConfig
from jsquad_lora.generate.greedy import generate_answers
from jsquad_lora.model.load import load_base_model, load_tokenizer
from jsquad_lora.model.lora import attach_lora
from jsquad_lora.model.source import resolve_model_source
from jsquad_lora.prompts.templates import render_prompt
from jsquad_lora.train.losses import answer_only_loss


def _train_steps(model, batches, head_at_labels_only: bool, bf16: bool) -> float:
    """Seconds per optimizer step (mean over the batches after one warm-up step)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for batch in batches:
        with harness.Timer() as timer:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if head_at_labels_only:
                    loss = answer_only_loss(model, batch)
                else:
                    loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        times.append(timer.seconds)
    return sum(times[1:]) / max(1, len(times) - 1)


def _prefill(model, ids: torch.Tensor, repeats: int = 3) -> float:
    model.eval()
    with torch.inference_mode():
        model(input_ids=ids, logits_to_keep=1)
        with harness.Timer() as timer:
            for _ in range(repeats):
                model(input_ids=ids, logits_to_keep=1)
    return timer.seconds / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m", help="built-in source, model directory or hub id")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per row (after one warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--questions", type=int, default=64, help="dev questions for the generation rows")
    parser.add_argument(
        "--adapter", help="a trained LoRA adapter (RUN_DIR/adapter) for the generation rows; default: untrained"
    )
    parser.add_argument(
        "--fast-only",
        action="store_true",
        help="only the rows of the default's own settings (train: head at labels; generation: all levers), "
        "float32 and bf16",
    )
    parser.add_argument(
        "--float32-only", action="store_true", help="skip the bfloat16 rows (CPUs without bf16 instructions)"
    )
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/cpu_levers.json)")
    args = parser.parse_args()
    torch.manual_seed(0)

    model_cfg = ModelConfig(name=args.model)
    path = resolve_model_source(model_cfg)
    tokenizer = load_tokenizer(str(path))
    base = load_base_model(dataclass_replace(model_cfg, name=str(path)))
    train_qs = load_split(resolve_split(None, "test")).questions
    render = lambda q: render_prompt(q, "newline")  # noqa: E731
    examples, _ = encode_train_set(train_qs[: args.batch * (args.steps + 1)], render, tokenizer, 512)
    collate = AnswerOnlyCollator(tokenizer.pad_token_id)
    batches = [
        collate([{"input_ids": e.input_ids, "labels": e.labels} for e in examples[k : k + args.batch]])
        for k in range(0, len(examples), args.batch)
    ]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:]) / max(1, len(batches) - 1)
    rows = []

    lora = attach_lora(copy.deepcopy(base), LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=["all-linear"]))
    for head, bf16 in ((False, False), (True, False), (False, True), (True, True)):
        if (args.fast_only and not head) or (args.float32_only and bf16):
            continue
        seconds = _train_steps(lora, batches, head, bf16)
        rows.append(
            {
                "lever": "train step",
                "setting": f"{'head at labels' if head else 'head everywhere'}, "
                f"{'bf16 autocast' if bf16 else 'float32'}",
                "seconds": seconds,
                "tokens_per_second": tokens / seconds,
            }
        )

    ids = torch.tensor([b for b in batches[1]["input_ids"].tolist()])
    for dtype in (torch.float32,) if args.float32_only else (torch.float32, torch.bfloat16):
        model = copy.deepcopy(base).to(dtype)
        seconds = _prefill(model, ids)
        rows.append(
            {
                "lever": "prefill",
                "setting": str(dtype).replace("torch.", ""),
                "seconds": seconds,
                "tokens_per_second": ids.numel() / seconds,
            }
        )

    # whole passages (as the default's evaluation sample), so that prefix sharing has something to share
    dev = stratified_sample(load_split(resolve_split(None, "valid")).questions, args.questions, 20231)
    prompts, passages, _ = build_prompts(dev, render, tokenizer, 640 - 20)
    if args.adapter:  # a trained adapter: the answers then say whether bfloat16 changes them
        from peft import PeftModel

        lora = PeftModel.from_pretrained(copy.deepcopy(base), args.adapter)
    merged = copy.deepcopy(lora).merge_and_unload()
    merged_bf16 = None if args.float32_only else copy.deepcopy(merged).to(torch.bfloat16)
    plain = DecodingConfig(
        max_new_tokens=20, batch_size=32, mode="extractive", share_prefix=False, candidate_head=False
    )
    settings = [  # each row adds one lever to the previous one (the first compares adapter handling)
        ("LoRA unmerged (peft), float32", lora, plain),
        ("LoRA merged, float32", merged, plain),
        ("+ LM head on the passage's tokens only", merged, dataclass_replace(plain, candidate_head=True)),
        ("+ shared prompt prefixes", merged, dataclass_replace(plain, candidate_head=True, share_prefix=True)),
        ("+ bfloat16 weights", merged_bf16, dataclass_replace(plain, candidate_head=True, share_prefix=True)),
    ]
    if args.fast_only:  # the default's generation settings only, float32 and bfloat16
        settings = [
            ("LoRA merged, float32, head on passage tokens, shared prefixes", merged, settings[3][2]),
            settings[4],
        ]
    if args.float32_only:
        settings = settings[:-1]
    answers = {}
    for name, model, decoding in settings:
        with harness.Timer() as timer:
            answers[name] = generate_answers(model, tokenizer, prompts, passages, decoding)
        rows.append(
            {
                "lever": "generation (extractive)",
                "setting": name,
                "seconds": timer.seconds,
                "questions_per_second": len(prompts) / timer.seconds,
                "answers_equal_to_first_row": sum(a == b for a, b in zip(answers[settings[0][0]], answers[name])),
            }
        )
    same = rows[-1]["answers_equal_to_first_row"]

    print(harness.describe())
    print(
        f"train batch: {args.batch} rows, {tokens:.0f} tokens; "
        f"generation: {len(prompts)} dev questions (whole passages); "
        f"bfloat16 answers equal to float32 unmerged: {same}/{len(prompts)}"
    )
    harness.print_table(
        rows,
        [
            ("lever", "lever"),
            ("setting", "setting"),
            ("seconds", "seconds", ".2f"),
            (
                "throughput",
                lambda r: (
                    f"{r['tokens_per_second']:.0f} tok/s"
                    if "tokens_per_second" in r
                    else f"{r['questions_per_second']:.2f} q/s"
                ),
            ),
            (
                "answers equal to the first generation row",
                lambda r: (
                    f"{r['answers_equal_to_first_row']}/{len(prompts)}" if "answers_equal_to_first_row" in r else None
                ),
            ),
        ],
    )
    harness.write_result(
        "cpu_levers",
        rows,
        out=args.out,
        title="CPU speed levers of the default recipe",
        batch=args.batch,
        tokens_per_batch=tokens,
        bf16_equal_answers=[same, len(prompts)],
    )


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


if __name__ == "__main__":
    main()
