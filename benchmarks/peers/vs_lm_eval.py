"""Evaluation against EleutherAI's lm-evaluation-harness and the loop a notebook would write.

The adapter `train-ours` trained (vs_trl.py), the same dev prompts (chat template), greedy, the same
max new tokens and stop strings (`<NL>`, newline, EOS): this tool's batched greedy generation (and its
extractive decoding) vs lm-eval (`HFLM` with `peft=` the adapter, a local `generate_until` task
holding the rendered prompts; only its `generate_until` is timed) vs one-at-a-time `generate`.
Rows run through bench_vs_peers.py (`--rows train-ours,eval-ours-greedy-float32,eval-lm_eval-float32`).
"""

from __future__ import annotations

import json
from pathlib import Path

import harness

from peers import common

TASK = "jsquad_bench_vs_peers"
#: the packages a row needs beyond .venv (checked before any row starts)
NEEDS = {"eval-lm_eval-float32": ("lm_eval",), "eval-lm_eval-bfloat16": ("lm_eval",)}


def row_eval_ours(args, work: Path, dtype: str, mode: str) -> dict:
    from jsquad_lora.generate.decoding import DecodingConfig
    from jsquad_lora.generate.greedy import generate_answers

    cfg, model, tokenizer = common.eval_model(args, dtype, merge=True)
    dev, prompts, passages = common.dev_prompts(args, cfg, tokenizer)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens, batch_size=cfg.eval.batch_size, mode=mode)
    with harness.Timer() as timer:
        answers = generate_answers(model, tokenizer, prompts, passages, decoding)
    return {
        "tool": "jsquad-lora",
        "setting": f"{mode}, adapter merged, batch {decoding.batch_size}, shared prefixes"
        + (", head on passage tokens" if mode == "extractive" else ""),
        "precision": dtype,
        "questions": len(prompts),
        "seconds": timer.seconds,
        "answers": answers,
    }


def row_eval_lm_eval(args, work: Path, dtype: str) -> dict:
    common.require("lm_eval")
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from jsquad_lora.encoding.tokens import prompt_ids
    from jsquad_lora.model.load import load_tokenizer
    from jsquad_lora.model.source import resolve_model_source

    cfg = common.recipe(args)
    source = resolve_model_source(cfg.model)
    tokenizer = load_tokenizer(source)
    dev, prompts, _ = common.dev_prompts(args, cfg, tokenizer)
    task_dir = work / "lm_eval_task"
    task_dir.mkdir(parents=True, exist_ok=True)
    data = task_dir / "dev.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": q.answers[0]}) + "\n" for p, q in zip(prompts, dev)))
    stops = json.dumps(list(common.STOPS))
    (task_dir / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        "doc_to_text: '{{prompt}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "target_delimiter: ''\n"
        f"generation_kwargs:\n  until: {stops}\n  do_sample: false\n  max_gen_toks: {args.max_new_tokens}\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    lm = HFLM(
        pretrained=source,
        peft=str(common.adapter(args)),
        dtype=dtype,
        batch_size=args.lm_eval_batch,
        add_bos_token=False,  # Gemma: the template writes <bos>; the GPU rows' tokenizer has none
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    generating = []  # the seconds inside generate_until (the rest: task and dataset set-up)
    plain_generate = lm.generate_until

    def timed_generate(requests, *a, **k):
        generating.append(harness.Timer())
        with generating[-1]:
            return plain_generate(requests, *a, **k)

    lm.generate_until = timed_generate
    with harness.Timer() as total:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[TASK],
            task_manager=TaskManager(include_path=str(task_dir)),
            log_samples=True,
            num_fewshot=0,
        )
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    answers = [s["resps"][0][0] for s in samples]
    ids_equal = sum(lm.tok_encode(s["arguments"][0][0]) == prompt_ids(tokenizer, p) for s, p in zip(samples, prompts))
    return {
        "tool": "lm-evaluation-harness",
        "setting": f"HFLM, peft adapter (unmerged), batch {args.lm_eval_batch}, generate_until",
        "precision": dtype,
        "questions": len(answers),
        # generation only: the ratio does not count lm_eval's set-up against it
        "seconds": sum(t.seconds for t in generating),
        "simple_evaluate_seconds": total.seconds,
        "answers": [a.strip() for a in answers],
        "prompt_ids_equal": ids_equal,
    }


def row_eval_hf_loop(args, work: Path, dtype: str) -> dict:
    """What a notebook writes: the peft model, one question at a time, `generate`, cut at a newline."""
    import torch

    cfg, model, tokenizer = common.eval_model(args, dtype, merge=False)
    dev, prompts, _ = common.dev_prompts(args, cfg, tokenizer)
    prompts = prompts[: args.loop_questions]  # it is slow: the first questions only
    model.eval()
    answers = []
    with harness.Timer() as timer, torch.inference_mode():
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)  # the prompt holds <bos>
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for stop in common.STOPS:
                text = text.split(stop)[0]
            answers.append(text.strip())
    return {
        "tool": "HF generate loop",
        "setting": "peft adapter (unmerged), one question at a time",
        "precision": dtype,
        "questions": len(prompts),
        "seconds": timer.seconds,
        "answers": answers,
    }


ROWS = {
    "eval-ours-greedy-float32": lambda a, w: row_eval_ours(a, w, "float32", "greedy"),
    "eval-lm_eval-float32": lambda a, w: row_eval_lm_eval(a, w, "float32"),
    "eval-ours-greedy-bfloat16": lambda a, w: row_eval_ours(a, w, "bfloat16", "greedy"),
    "eval-lm_eval-bfloat16": lambda a, w: row_eval_lm_eval(a, w, "bfloat16"),
    "eval-ours-extractive-bfloat16": lambda a, w: row_eval_ours(a, w, "bfloat16", "extractive"),
    "eval-hf-loop-float32": lambda a, w: row_eval_hf_loop(a, w, "float32"),
}
#: left out of the GPU rows
CPU_ONLY = ("eval-ours-extractive-bfloat16", "eval-hf-loop-float32")


def compare(rows: list[dict], by: dict) -> None:
    """Each answering row's answers equal to lm-eval float32's (of its own device), and each greedy row's
    differences from lm-eval at its own precision."""
    for r in rows:
        reference = by.get(("gpu-" if r["name"].startswith("gpu-") else "") + "eval-lm_eval-float32")
        if "answers" in r and reference:
            r["answers_equal_to_lm_eval_float32"] = common.equal_answers(r["answers"], reference["answers"])
    for r in rows:
        if "answers" in r:
            twin = by.get(r["name"].replace("ours-greedy", "lm_eval"))
            if twin is not None and twin is not r and "eval-ours-greedy" in r["name"]:
                r["differences"] = common.differences(r["answers"], twin["answers"])


def ratios(by: dict) -> dict:
    """Ours / theirs, questions per second."""
    q = "questions_per_second"
    return {
        "eval_ratio": common.ratio(by, "eval-ours-greedy-float32", "eval-lm_eval-float32", q),
        "eval_ratio_bfloat16": common.ratio(by, "eval-ours-greedy-bfloat16", "eval-lm_eval-bfloat16", q),
        "eval_ratio_vs_hf_loop": common.ratio(by, "eval-ours-greedy-float32", "eval-hf-loop-float32", q),
        "gpu_eval_ratio": common.ratio(by, "gpu-eval-ours-greedy-float32", "gpu-eval-lm_eval-float32", q),
        "gpu_eval_ratio_bfloat16": common.ratio(by, "gpu-eval-ours-greedy-bfloat16", "gpu-eval-lm_eval-bfloat16", q),
    }
