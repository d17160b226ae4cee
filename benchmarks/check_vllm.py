"""The vLLM backend against the HF backend: same run, same dev questions, greedy, the same weights at
the same precision on both sides; prints the share of identical answers, both backends' EM and wall
times, and writes JSON. CUDA + `[vllm]` only.

Like with like: both sides load the base unquantised in `model.dtype` (a run trained on 8-bit
weights, such as rinna-3.6b-seed, is compared on float16 weights: vLLM cannot serve the 8-bit
ones), HF with the adapter merged, vLLM as the run would serve it (`vllm_backend.serving`: the
adapter per request, or merged into a temporary model directory).

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/check_vllm.py --run runs/rinna-3.6b-best [--questions 500]
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
from jsquad_lora.evaluate.scorers import score_predictions
from jsquad_lora.evaluate.vllm import VllmEngines, answerer, architecture_of, check_available, serving
from jsquad_lora.generate.decoding import DecodingConfig
from jsquad_lora.generate.greedy import generate_answers
from jsquad_lora.model.lora import load_trained
from jsquad_lora.model.source import base_model_and_tokenizer
from jsquad_lora.prompts.fewshot import make_renderer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/vllm_check.json)")
    args = parser.parse_args()
    check_available("greedy")
    run_dir = Path(args.run)
    trained = load_config(run_dir / "config.yaml")
    quantized = trained.model.load_in_8bit or trained.model.load_in_4bit
    cfg = load_config(
        run_dir / "config.yaml",
        ["eval.backend=vllm", "eval.decoding=greedy", "model.load_in_8bit=false", "model.load_in_4bit=false"],
    )
    train = load_split(resolve_split(cfg.data.dir, cfg.data.train_split)).questions
    questions = load_split(resolve_split(cfg.data.dir, cfg.data.eval_split)).questions[: args.questions]
    model, tokenizer = base_model_and_tokenizer(cfg, run_dir, train)
    adapter = run_dir / "adapter"
    if adapter.exists():
        model = load_trained(model, adapter, cfg.lora.enabled)
    model = model.to(getattr(torch, cfg.model.dtype))  # the precision vLLM is given (dtype=model.dtype)
    render = make_renderer(cfg, tokenizer, train)
    prompts, passages, _ = build_prompts(questions, render, tokenizer, cfg.model.max_length - cfg.eval.max_new_tokens)
    decoding = DecodingConfig(max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size, mode="greedy")
    answers, seconds = {}, {}
    with harness.Timer() as timer:
        answers["hf"] = generate_answers(model, tokenizer, prompts, passages, decoding)
    seconds["hf"] = timer.seconds
    plan = serving(architecture_of(model), cfg.lora, trained=adapter.exists())
    with VllmEngines() as engines:
        generate = answerer(cfg, run_dir, model, tokenizer, adapter if adapter.exists() else None, engines)
        with harness.Timer() as timer:
            answers["vllm"] = generate(prompts, decoding, None)
        seconds["vllm"] = timer.seconds
    served = "the adapter per request" if plan.lora_request else f"{plan.model} weights"
    precision = {
        "hf": f"{cfg.model.dtype}, adapter merged" if adapter.exists() else cfg.model.dtype,
        "vllm": f"{cfg.model.dtype}, {served}",
    }
    same = sum(a == b for a, b in zip(answers["hf"], answers["vllm"]))
    em = {
        k: score_predictions(questions, {q.id: a for q, a in zip(questions, v)}, "jglue").exact_match
        for k, v in answers.items()
    }
    rows = [{"backend": k, "seconds": seconds[k], "exact_match": em[k], "precision": precision[k]} for k in answers]
    print(harness.describe())
    harness.print_table(
        rows, [("backend", "backend"), ("seconds", "seconds", ".1f"), ("EM (jglue)", "exact_match", ".2f")]
    )
    print(f"identical answers: {same}/{len(questions)}  (weights: HF {precision['hf']}; vLLM {precision['vllm']})")
    if quantized:
        print("the run trained on 8-/4-bit weights: both sides here use its unquantised base, as vLLM serves it")
    harness.write_result(
        "vllm_check",
        rows,
        out=args.out,
        packages=("vllm",),
        title="vllm vs hf greedy answers",
        run=str(run_dir),
        questions=len(questions),
        identical=same,
        trained_quantized=quantized,
    )


if __name__ == "__main__":
    main()
