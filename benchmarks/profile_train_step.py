"""Where a training step of the default goes: shared-prefix rows of Gemma 3 270M + LoRA all-linear,
float32 or bf16 autocast, step times and the torch profiler's top operators for one step.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/profile_train_step.py bf16|float32 [--dropout 0.05]
"""

from __future__ import annotations

import argparse

import harness
import torch
from torch.profiler import profile

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
from jsquad_lora.train.losses import answer_only_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("precision", choices=("bf16", "float32"))
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (the default's 0.05)")
    args = parser.parse_args()
    path = resolve_model_source(ModelConfig(name="gemma-3-270m"))
    tokenizer = load_tokenizer(path)
    model = attach_lora(
        load_base_model(ModelConfig(name=path)),
        LoraSettings(r=8, alpha=16, dropout=args.dropout, target_modules=["all-linear"]),
    )
    questions = stratified_sample(load_split(resolve_split(None, "test")).questions, 120, 20231)
    examples, _ = encode_train_set(questions, lambda q: render_prompt(q, "chat", tokenizer=tokenizer), tokenizer, 640)
    rows = share_prefixes(examples, [q.context for q in questions], max_tokens=1280)
    collate = SharedPrefixCollator(tokenizer.pad_token_id, sliding_window(model.config))
    batches = [
        collate([r.__dict__ for r in rows[k : k + 4]]) for k in range(0, 16, 4)
    ]  # 4 rows per step, as the default
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = answer_only_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    print(harness.describe())
    for i, batch in enumerate(batches):
        with harness.Timer() as timer:
            step(batch)
        print(
            f"step {i}: {tuple(batch['input_ids'].shape)} tokens, {timer.seconds:.2f} s"
            + (" (warm-up)" if i == 0 else "")
        )
    with profile() as prof:
        step(batches[1])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
