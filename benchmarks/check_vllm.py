"""The vLLM backend against the HF backend: same run, same dev questions, greedy; prints the
share of identical answers, both backends' EM and wall times, and writes JSON. CUDA + `[vllm]` only.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/check_vllm.py --run runs/rinna-3.6b-best [--questions 500]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from jsquad_lora.config import load_config
from jsquad_lora.data import load_split, resolve_split
from jsquad_lora.decoding import DecodingConfig
from jsquad_lora.evaluation import build_prompts
from jsquad_lora.generation import generate_answers
from jsquad_lora.modeling import load_trained
from jsquad_lora.run import base_model_and_tokenizer, make_renderer, vllm_answerer
from jsquad_lora.scoring import score_predictions
from jsquad_lora.vllm_backend import VllmEngines, check_available


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--out", default="benchmarks/results/vllm_check.json")
    args = parser.parse_args()
    check_available("greedy")
    run_dir = Path(args.run)
    cfg = load_config(run_dir / "config.yaml", ["eval.backend=vllm", "eval.decoding=greedy"])
    train = load_split(resolve_split(cfg.data.dir, cfg.data.train_split)).questions
    questions = load_split(resolve_split(cfg.data.dir, cfg.data.eval_split)).questions[: args.questions]
    model, tokenizer = base_model_and_tokenizer(cfg, run_dir, train)
    adapter = run_dir / "adapter"
    if adapter.exists():
        model = load_trained(model, adapter, cfg.lora.enabled)
    render = make_renderer(cfg, tokenizer, train)
    prompts, passages, _ = build_prompts(questions, render, tokenizer, cfg.model.max_length - cfg.eval.max_new_tokens)
    decoding = DecodingConfig(max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size, mode="greedy")
    answers, seconds = {}, {}
    start = time.perf_counter()
    answers["hf"] = generate_answers(model, tokenizer, prompts, passages, decoding)
    seconds["hf"] = time.perf_counter() - start
    engines = VllmEngines()
    generate = vllm_answerer(cfg, run_dir, model, tokenizer, adapter if adapter.exists() else None, engines)
    start = time.perf_counter()
    answers["vllm"] = generate(prompts, decoding, None)
    seconds["vllm"] = time.perf_counter() - start
    same = sum(a == b for a, b in zip(answers["hf"], answers["vllm"]))
    em = {
        k: score_predictions(questions, {q.id: a for q, a in zip(questions, v)}, "jglue").exact_match
        for k, v in answers.items()
    }
    print(f"{'backend':<8}{'seconds':>10}{'EM (jglue)':>12}")
    for k in answers:
        print(f"{k:<8}{seconds[k]:>10.1f}{em[k]:>12.2f}")
    print(f"identical answers: {same}/{len(questions)}")
    result = {
        "check": "vllm vs hf greedy answers",
        "date": datetime.date.today().isoformat(),
        "run": str(run_dir),
        "questions": len(questions),
        "identical": same,
        "seconds": seconds,
        "exact_match": em,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
