"""What the peer comparisons share: the recipe each row runs, its data (training examples, dev prompts),
the model and adapter loading, the GPU rows' model, the rates and ratios, the missing-package check.

Every row rebuilds its inputs in its own process (bench_vs_peers.py), so nothing here is cached.
CPU rows: the default recipe (Gemma 3 270M). GPU rows: the rinna-3.6b-best recipe on the
rinna-3.6B-shaped random model `row_prepare_gpu_model` saved, the same JSQuAD files.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STOPS = ("<NL>", "\n")
PEERS_VENV = (
    "python3 -m venv .venv-peers && .venv-peers/bin/pip install -q torch==2.13.0 && "
    ".venv-peers/bin/pip install -q -e '.[peers]'"
)


def require(*modules: str) -> None:
    """Exit with how to install them where a peer's modules are missing (they are the `peers` extra)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(
            f"{', '.join(missing)} not installed in {sys.prefix}: the peer rows need the `peers` extra, "
            f"kept out of .venv (BENCHMARKS.md):\n    {PEERS_VENV}\n"
            "then run benchmarks/bench_vs_peers.py with .venv-peers/bin/python (or leave those rows out: --rows)"
        )


def recipe(args, overrides=()):
    """The run config of a row: the default recipe on the CPU, rinna-3.6b-best on the GPU rows' model."""
    from jsquad_lora.config.load import load_config

    if not args.gpu:
        return load_config("gemma-3-270m", [f"data.train_limit={args.train_questions}", *overrides])
    data = Path(os.environ.get("JSQUAD_DIR", "../shared/jsquad")).resolve()
    return load_config(
        "rinna-3.6b-best",
        [
            f"model.name={args.work / 'gpu-model'}",
            f"data.dir={data}",
            "data.train_split=test",
            "data.eval_split=valid",
            f"data.train_limit={args.train_questions}",
            *overrides,
        ],
    )


def model_and_tokenizer(cfg, dtype: str = "float32"):
    from jsquad_lora.model.load import load_base_model, load_tokenizer
    from jsquad_lora.model.source import resolve_model_source

    source = resolve_model_source(cfg.model)
    model = load_base_model(dataclasses.replace(cfg.model, name=source, gguf_file=None, dtype=dtype))
    return model, load_tokenizer(source), source


def adapter(args) -> Path:
    """Where the training row `train-ours` saves its adapter, which every evaluation row loads."""
    return args.work / ("gpu-adapter" if args.gpu else "adapter")


def train_inputs(args, cfg, tokenizer):
    """The training questions and their examples (prompt + first answer + EOS; labels on answer + EOS)."""
    from jsquad_lora.data.select import load_questions
    from jsquad_lora.encoding.tokens import encode_train_set
    from jsquad_lora.prompts.fewshot import make_renderer

    train_qs, _ = load_questions(cfg)
    render = make_renderer(cfg, tokenizer, train_qs)
    examples, _ = encode_train_set(train_qs, render, tokenizer, cfg.model.max_length)
    return train_qs, examples


def dev_prompts(args, cfg, tokenizer):
    """The first M dev questions (whole passages come together) and their prompts."""
    from jsquad_lora.data.jglue import resolve_split
    from jsquad_lora.data.jsquad import load_split
    from jsquad_lora.evaluate.loop import build_prompts
    from jsquad_lora.prompts.fewshot import make_renderer

    dev = load_split(resolve_split(cfg.data.dir, cfg.data.eval_split)).questions[: args.dev_questions]
    render = make_renderer(cfg, tokenizer, dev)
    prompts, passages, _ = build_prompts(dev, render, tokenizer, cfg.model.max_length - args.max_new_tokens)
    return dev, prompts, passages


def dev_em(model, tokenizer, args, cfg, k: int) -> float:
    """Exact match (jglue) of greedy answers on the first k dev questions: did training learn."""
    from jsquad_lora.evaluate.scorers import SCORERS
    from jsquad_lora.generate.decoding import DecodingConfig
    from jsquad_lora.generate.greedy import generate_answers

    dev, prompts, passages = dev_prompts(argparse.Namespace(**{**vars(args), "dev_questions": k}), cfg, tokenizer)
    answers = generate_answers(
        model, tokenizer, prompts, passages, DecodingConfig(max_new_tokens=args.max_new_tokens, mode="greedy")
    )
    return 100 * sum(SCORERS["jglue"].question(a, q.answers)[0] for a, q in zip(answers, dev)) / len(dev)


def eval_model(args, dtype: str, merge: bool):
    """The row's config, the base model with the trained adapter (merged or not) in `dtype`, the tokenizer."""
    import torch
    from peft import PeftModel

    config = recipe(args)
    model, tokenizer, _ = model_and_tokenizer(config)
    model = PeftModel.from_pretrained(model, str(adapter(args)))
    if merge:
        model = model.merge_and_unload()
    return config, model.to(getattr(torch, dtype)), tokenizer


def row_prepare_gpu_model(args, work: Path) -> dict:
    """A rinna-3.6B-shaped GPT-NeoX with random weights (bench_gpu.SHAPES; `--gpu-shape tiny` for a
    CPU smoke run) and a character tokenizer of exactly its 32,000 tokens: every character of the
    rows' questions first, then CJK letters. rinna's sentencepiece tokenizer is not available
    offline; one token per character makes the sequences longer than rinna's (a worst case for
    both tools alike). Saved to WORK/gpu-model for every GPU row (TRL and lm-eval load it by path)."""
    import torch
    from bench_gpu import VOCAB, model_config, random_model

    from jsquad_lora.data.jglue import resolve_split
    from jsquad_lora.data.jsquad import load_split
    from jsquad_lora.model.sources.tiny import build_char_tokenizer

    args.gpu = True
    config = recipe(args)
    texts = [
        f"{q.context}{q.question}{''.join(q.answers)}"
        for split, n in ((config.data.train_split, args.train_questions), (config.data.eval_split, args.dev_questions))
        for q in load_split(resolve_split(config.data.dir, split)).questions[: max(n, args.em_questions)]
    ]
    seen = set("".join(texts))
    filler = [chr(c) for c in [*range(0x4E00, 0xA000), *range(0xAC00, 0xD7A4)] if chr(c) not in seen]
    size = len(build_char_tokenizer(texts))
    tokenizer = build_char_tokenizer([*texts, "".join(filler[: VOCAB - size])])
    assert len(tokenizer) == VOCAB, len(tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = random_model(model_config(args.gpu_shape, tokenizer), torch.bfloat16, device, None)
    target = work / "gpu-model"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return {"tool": "set-up", "shape": args.gpu_shape, "parameters": sum(p.numel() for p in model.parameters())}


def add_rates(rows: list[dict]) -> None:
    """Examples/s and example tokens/s of a training row, questions/s of an evaluation row."""
    for r in rows:
        if "examples" in r:
            r["examples_per_second"] = r["examples"] / r["seconds"]
            r["example_tokens_per_second"] = r["example_tokens"] / r["seconds"]
        else:
            r["questions_per_second"] = r["questions"] / r["seconds"]


def ratio(by: dict, ours: str, theirs: str, key: str) -> float | None:
    """Row `ours`'s `key` over row `theirs`'s; None where either row did not run."""
    return by[ours][key] / by[theirs][key] if ours in by and theirs in by else None


def equal_answers(a: list[str], b: list[str]) -> int:
    return sum(x == y for x, y in zip(a, b))


def differences(ours: list[str], theirs: list[str]) -> list[dict]:
    return [{"index": i, "ours": a, "lm_eval": b} for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
