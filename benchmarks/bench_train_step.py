"""Training-step speed of the default's shape, variant against variant: the same shared-prefix batches of Gemma 3
270M + LoRA (all-linear) under bf16 autocast, tokens/s over `--steps` steps after a warm-up, each variant in its
own process, the variants alternated `--rounds` times (2 cores are noisy: compare within one invocation).

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_train_step.py [--rounds 2] [--steps 10] \
        [--r 8] [--out benchmarks/results/train-step.json]

Variants: `plain-head` (the output layer called as is: autocast casts its frozen float32 weight to bf16 at every
call, as before issue 24), `head-cast-once` (`train.losses.head_logits`), `head-cast-once, dropout 0`,
`all frozen cast once, dropout 0` (`train.frozen_casts`, the default: every frozen base layer too), the same with
LoRA layers that leave a bf16 input's dtype to autocast (no float32 round trip in peft; tried, no gain), and LoRA
in the top half / third of the layers only (`lora.top_layers`). `--only A B` alternates just those (ratios
against the first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

VARIANTS = {
    "plain-head": {"plain_head": True, "dropout": 0.05},
    "head-cast-once": {"plain_head": False, "dropout": 0.05},
    "head-cast-once, dropout 0": {"plain_head": False, "dropout": 0.0},
    "all frozen cast once, dropout 0": {"plain_head": False, "dropout": 0.0, "frozen_cast_once": True},
    "+ LoRA inputs left to autocast": {
        "plain_head": False,
        "dropout": 0.0,
        "frozen_cast_once": True,
        "lora_inputs_to_autocast": True,
    },
    "top half of the layers": {"plain_head": False, "dropout": 0.0, "frozen_cast_once": True, "top_layers": 9},
    "top third of the layers": {"plain_head": False, "dropout": 0.0, "frozen_cast_once": True, "top_layers": 6},
}


def one_variant(
    plain_head: bool,
    dropout: float,
    steps: int,
    r: int,
    frozen_cast_once: bool = False,
    top_layers: int | None = None,
    lora_inputs_to_autocast: bool = False,
) -> dict:
    import torch

    from jsquad_lora.config.schema import LoraSettings, ModelConfig
    from jsquad_lora.data.jglue import resolve_split
    from jsquad_lora.data.jsquad import load_split
    from jsquad_lora.data.sampling import stratified_sample
    from jsquad_lora.encoding.attention import sliding_window
    from jsquad_lora.encoding.collators import SharedPrefixCollator
    from jsquad_lora.encoding.packing import share_prefixes
    from jsquad_lora.encoding.tokens import encode_train_set
    from jsquad_lora.model.load import load_base_model, load_tokenizer
    from jsquad_lora.model.lora import attach_lora
    from jsquad_lora.model.source import resolve_model_source
    from jsquad_lora.prompts.templates import render_prompt
    from jsquad_lora.train import losses
    from jsquad_lora.train.frozen_casts import frozen_linears_cast

    if plain_head:
        losses.head_logits = lambda head, hidden: head(hidden)
    path = resolve_model_source(ModelConfig(name="gemma-3-270m"))
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)
    model = attach_lora(
        load_base_model(ModelConfig(name=path)),
        LoraSettings(r=r, alpha=2 * r, dropout=dropout, target_modules=["all-linear"], top_layers=top_layers),
    )
    questions = stratified_sample(load_split(resolve_split(None, "test")).questions, 200, 20231)
    examples, _ = encode_train_set(questions, lambda q: render_prompt(q, "chat", tokenizer=tokenizer), tokenizer, 640)
    rows = share_prefixes(examples, [q.context for q in questions], max_tokens=1280)
    collate = SharedPrefixCollator(tokenizer.pad_token_id, sliding_window(model.config))
    batches = [collate([vars(row) for row in rows[k : k + 4]]) for k in range(0, 4 * (steps + 1), 4)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    model.train()
    seconds, tokens, step_losses = 0.0, 0, []
    with frozen_linears_cast(model, frozen_cast_once):
        if lora_inputs_to_autocast:  # peft casts a bf16 input to float32 for LoRA, autocast casts it back: skip
            for module in model.modules():
                if hasattr(module, "lora_A"):
                    module.cast_input_dtype_enabled = False
        for i, batch in enumerate(batches):
            torch.manual_seed(100 + i)
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = losses.answer_only_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if i:  # step 0 warms up
                seconds += time.perf_counter() - start
                tokens += int((batch["input_ids"] != tokenizer.pad_token_id).sum())
            step_losses.append(round(float(loss), 4))
    return {"tokens_per_second": tokens / seconds, "seconds": seconds, "tokens": tokens, "losses": step_losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--r", type=int, default=8, help="LoRA rank (alpha 2r)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="these variants (default: all)")
    parser.add_argument("--out")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # a child process: one variant, JSON on stdout
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_variant(**VARIANTS[args.variant], steps=args.steps, r=args.r)))
        return
    import harness

    names = args.only or list(VARIANTS)
    rows = []
    for round_ in range(1, args.rounds + 1):
        for name in names:
            child = [sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--r", str(args.r)]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            rows.append({"round": round_, "variant": name, **json.loads(done.stdout.strip().splitlines()[-1])})
    base = sum(r["tokens_per_second"] for r in rows if r["variant"] == names[0]) / args.rounds
    for row in rows:
        row["vs_first"] = row["tokens_per_second"] / base
    harness.print_table(
        rows, [("round", "round", ""), ("variant", "variant", ""), ("tokens/s", "tokens_per_second", ".0f")]
    )
    for name in names:
        mean = sum(r["tokens_per_second"] for r in rows if r["variant"] == name) / args.rounds
        print(f"{name}: mean {mean:.0f} tokens/s, {mean / base:.2f}x {names[0]}")
    harness.write_result("train-step", rows, out=args.out)


if __name__ == "__main__":
    main()
