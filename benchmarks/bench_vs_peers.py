"""This tool against the tools people would use instead, on the same model, data, prompt and machine.

Training: the default recipe (configs/gemma-3-270m.yaml: Gemma 3 270M, LoRA all-linear r=8/alpha 16/
dropout 0.05, chat template, answer-only loss, one epoch, lr 5e-4 cosine) on the first N questions of
its training sample: this tool's `training.train` (shared-prefix rows, LM head at the labelled
positions, bf16 autocast where the CPU has bf16 instructions) vs TRL's `SFTTrainer` given the very
same token ids and answer masks (pre-tokenised dataset, completion-only loss, padding-free batches,
the same precision, gradient checkpointing off, no checkpoints).
Evaluation: the adapter this tool trained, the same dev prompts (chat template), greedy, the same
max new tokens and stop strings (`<NL>`, newline, EOS): `evaluation`'s batched greedy generation vs
EleutherAI's lm-evaluation-harness (`HFLM` with `peft=` the adapter, a local `generate_until`
task holding the rendered prompts) vs the one-at-a-time `generate` loop a notebook would write.
Every row runs in its own subprocess on the CPU (CUDA hidden; its peak RSS is the row's memory), none
warmed up. Prints a table and writes benchmarks/results/peers.json with `train_ratio` and `eval_ratio` (ours / theirs).

Needs TRL and lm-eval in the same environment (the `peers` extra; lm-eval is kept out of .venv):

    python3 -m venv .venv-peers && .venv-peers/bin/pip install -q torch==2.13.0 && \\
        .venv-peers/bin/pip install -q -e '.[peers]' && \\
        JSQUAD_DIR=../shared/jsquad .venv-peers/bin/python benchmarks/bench_vs_peers.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "peers.json"
STOPS = ("<NL>", "\n")
TASK = "jsquad_bench_vs_peers"


# ---------------------------------------------------------------- shared inputs (each row rebuilds them)


def _cfg(args, dtype_overrides=()):
    """CPU rows: the default recipe (Gemma 3 270M). GPU rows: the rinna-3.6b-best recipe on the
    rinna-3.6B-shaped random model `_prepare_gpu_model` saved, the same JSQuAD files."""
    from jsquad_lora.config.load import load_config

    if not args.gpu:
        return load_config("gemma-3-270m", [f"data.train_limit={args.train_questions}", *dtype_overrides])
    data = Path(os.environ.get("JSQUAD_DIR", "../shared/jsquad")).resolve()
    return load_config(
        "rinna-3.6b-best",
        [
            f"model.name={args.work / 'gpu-model'}",
            f"data.dir={data}",
            "data.train_split=test",
            "data.eval_split=valid",
            f"data.train_limit={args.train_questions}",
            *dtype_overrides,
        ],
    )


def _model_and_tokenizer(cfg, dtype: str = "float32"):
    import dataclasses

    from jsquad_lora.model.load import load_base_model, load_tokenizer
    from jsquad_lora.model.source import resolve_model_source

    source = resolve_model_source(cfg.model)
    model = load_base_model(dataclasses.replace(cfg.model, name=source, gguf_file=None, dtype=dtype))
    return model, load_tokenizer(source), source


def _adapter(args) -> Path:
    return args.work / ("gpu-adapter" if args.gpu else "adapter")


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
    cfg = _cfg(args)
    texts = [
        f"{q.context}{q.question}{''.join(q.answers)}"
        for split, n in ((cfg.data.train_split, args.train_questions), (cfg.data.eval_split, args.dev_questions))
        for q in load_split(resolve_split(cfg.data.dir, split)).questions[: max(n, args.em_questions)]
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


def _train_inputs(args, cfg, tokenizer):
    """The training questions and their examples (prompt + first answer + EOS; labels on answer + EOS)."""
    from jsquad_lora.data.select import load_questions
    from jsquad_lora.encoding.tokens import encode_train_set
    from jsquad_lora.prompts.fewshot import make_renderer

    train_qs, _ = load_questions(cfg)
    render = make_renderer(cfg, tokenizer, train_qs)
    examples, _ = encode_train_set(train_qs, render, tokenizer, cfg.model.max_length)
    return train_qs, examples


def _dev_prompts(args, cfg, tokenizer):
    """The first M dev questions (whole passages come together) and their prompts."""
    from jsquad_lora.data.jglue import resolve_split
    from jsquad_lora.data.jsquad import load_split
    from jsquad_lora.evaluate.loop import build_prompts
    from jsquad_lora.prompts.fewshot import make_renderer

    dev = load_split(resolve_split(cfg.data.dir, cfg.data.eval_split)).questions[: args.dev_questions]
    render = make_renderer(cfg, tokenizer, dev)
    prompts, passages, _ = build_prompts(dev, render, tokenizer, cfg.model.max_length - args.max_new_tokens)
    return dev, prompts, passages


def _dev_em(model, tokenizer, args, cfg, k: int) -> float:
    """Exact match (jglue) of greedy answers on the first k dev questions: did training learn."""
    from jsquad_lora.evaluate.scorers import SCORERS
    from jsquad_lora.generate.decoding import DecodingConfig
    from jsquad_lora.generate.greedy import generate_answers

    dev, prompts, passages = _dev_prompts(argparse.Namespace(**{**vars(args), "dev_questions": k}), cfg, tokenizer)
    answers = generate_answers(
        model, tokenizer, prompts, passages, DecodingConfig(max_new_tokens=args.max_new_tokens, mode="greedy")
    )
    return 100 * sum(SCORERS["jglue"].question(a, q.answers)[0] for a, q in zip(answers, dev)) / len(dev)


# ---------------------------------------------------------------- rows


def row_train_ours(args, work: Path) -> dict:
    import torch

    from jsquad_lora.encoding.packing import share_prefixes
    from jsquad_lora.model.lora import attach_lora, merged
    from jsquad_lora.train.trainer import train
    from jsquad_lora.util.devices import train_in_bf16

    cfg = _cfg(args, ["train.logging_steps=1"])  # every step's loss, as TRL logs it below
    model, tokenizer, _ = _model_and_tokenizer(cfg, cfg.model.dtype)  # the recipe's master weights
    train_qs, examples = _train_inputs(args, cfg, tokenizer)
    shared = cfg.train.batching == "shared_prefix"
    rows = (
        share_prefixes(examples, [q.context for q in train_qs], max_tokens=2 * cfg.model.max_length)
        if shared
        else examples
    )
    model = attach_lora(model, cfg.lora)
    bf16 = train_in_bf16(cfg.train.mixed_precision)
    # a fresh start: train() would resume from (or skip to the end of) an earlier run's checkpoints
    shutil.rmtree(work / "ours-checkpoints", ignore_errors=True)
    (work / "ours-loss.jsonl").unlink(missing_ok=True)
    torch.manual_seed(cfg.train.seed)
    result = train(
        model,
        rows,
        cfg.train,
        work / "ours-checkpoints",
        work / "ours-loss.jsonl",
        bf16=bf16,
        save_to=_adapter(args),
        tokenizer=tokenizer,
    )
    em = _dev_em(merged(model), tokenizer, args, cfg, args.em_questions)
    batching = (
        f"shared-prefix rows (batch {cfg.train.batch_size} rows), LM head at labels"
        if shared
        else f"{cfg.train.batching} batches of {cfg.train.batch_size}"
    )
    return {
        "tool": "jsquad-lora",
        "setting": f"{batching}, {'bf16 autocast' if bf16 else 'float32'}",
        "precision": "bf16 autocast" if bf16 else "float32",
        "examples": len(examples),
        "rows": len(rows),
        "steps": result.steps,
        "seconds": result.seconds,
        "example_tokens": sum(len(e.input_ids) for e in examples),
        "processed_tokens": sum(len(r.input_ids) for r in rows),
        "train_loss": sum(r["loss"] for r in result.log) / len(result.log),  # the mean of the step losses
        "dev_em": em,
    }


def row_train_trl(args, work: Path) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from jsquad_lora.model.lora import lora_target_modules
    from jsquad_lora.util.devices import train_in_bf16

    cfg = _cfg(args)
    model, tokenizer, _ = _model_and_tokenizer(cfg, cfg.model.dtype)  # the recipe's master weights
    _, examples = _train_inputs(args, cfg, tokenizer)
    # the very token ids this tool trains on; TRL's completion mask = this tool's answer-only labels
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": [e.input_ids for e in examples],
            "completion_mask": [[int(x != -100) for x in e.labels] for e in examples],
        }
    )
    bf16 = train_in_bf16(cfg.train.mixed_precision)
    t = cfg.train
    sft = SFTConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=t.batch_size if args.gpu else args.trl_batch,  # GPU: the recipe's 16
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        seed=t.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        use_liger_kernel=torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None,
        completion_only_loss=True,
        padding_free=True,  # one flattened row per batch, position ids restart per example
        max_length=None,  # the examples are already fitted to model.max_length (as this tool fits them)
        gradient_checkpointing=False,  # TRL's default is on; off is faster where memory suffices
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=lora_target_modules(cfg.lora),
        use_rslora=cfg.lora.use_rslora,
        task_type="CAUSAL_LM",
    )
    # no KV cache in training: a forward pass that builds one skips transformers' packed-sequence
    # mask, and the padding-free row's examples would attend to each other
    model.config.use_cache = False
    torch.manual_seed(t.seed)
    trainer = SFTTrainer(model=model, args=sft, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    profiled = _step_profiler(step=2) if args.profile_trl else None
    if profiled:
        trainer.add_callback(profiled)
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    merged_model = trainer.model.merge_and_unload()
    em = _dev_em(merged_model, tokenizer, args, cfg, args.em_questions)
    return {
        **({"profile": profiled.table} if profiled else {}),
        "tool": "TRL SFTTrainer",
        "setting": f"padding-free batches of {sft.per_device_train_batch_size}, completion-only loss, "
        f"{'bf16' if bf16 else 'float32'}, no gradient checkpointing"
        + (", Liger kernels" if sft.use_liger_kernel else ""),
        "precision": "bf16 autocast" if bf16 else "float32",
        "examples": len(examples),
        "steps": trainer.state.global_step,
        "seconds": seconds,
        "example_tokens": sum(len(e.input_ids) for e in examples),
        "processed_tokens": sum(len(e.input_ids) for e in examples),
        "train_loss": output.training_loss,  # the mean of the epoch's step losses
        "dev_em": em,
    }


def _step_profiler(step: int):
    """A TrainerCallback that runs torch.profiler over optimizer step `step` (`--profile-trl`: where
    TRL's step goes; that run's timing is then not a clean row). Its table ends up in `.table`."""
    from torch.profiler import profile
    from transformers import TrainerCallback

    class StepProfile(TrainerCallback):
        table, profiler = None, None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == step:
                self.profiler = profile()
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is not None and state.global_step == step:
                self.profiler.__exit__(None, None, None)
                self.table = self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
                print(self.table, file=sys.stderr)
                self.profiler = None

    return StepProfile()


def _eval_model(args, dtype: str, merge: bool):
    import torch
    from peft import PeftModel

    cfg = _cfg(args)
    model, tokenizer, source = _model_and_tokenizer(cfg)
    model = PeftModel.from_pretrained(model, str(_adapter(args)))
    if merge:
        model = model.merge_and_unload()
    return cfg, model.to(getattr(torch, dtype)), tokenizer


def row_eval_ours(args, work: Path, dtype: str, mode: str) -> dict:
    from jsquad_lora.generate.decoding import DecodingConfig
    from jsquad_lora.generate.greedy import generate_answers

    cfg, model, tokenizer = _eval_model(args, dtype, merge=True)
    dev, prompts, passages = _dev_prompts(args, cfg, tokenizer)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens, batch_size=cfg.eval.batch_size, mode=mode)
    start = time.perf_counter()
    answers = generate_answers(model, tokenizer, prompts, passages, decoding)
    seconds = time.perf_counter() - start
    return {
        "tool": "jsquad-lora",
        "setting": f"{mode}, adapter merged, batch {decoding.batch_size}, shared prefixes"
        + (", head on passage tokens" if mode == "extractive" else ""),
        "precision": dtype,
        "questions": len(prompts),
        "seconds": seconds,
        "answers": answers,
    }


def row_eval_lm_eval(args, work: Path, dtype: str) -> dict:
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from jsquad_lora.model.load import load_tokenizer
    from jsquad_lora.model.source import resolve_model_source

    cfg = _cfg(args)
    source = resolve_model_source(cfg.model)
    tokenizer = load_tokenizer(source)
    dev, prompts, _ = _dev_prompts(args, cfg, tokenizer)
    task_dir = work / "lm_eval_task"
    task_dir.mkdir(parents=True, exist_ok=True)
    data = task_dir / "dev.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": q.answers[0]}) + "\n" for p, q in zip(prompts, dev)))
    stops = json.dumps(list(STOPS))
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
        peft=str(_adapter(args)),
        dtype=dtype,
        batch_size=args.lm_eval_batch,
        add_bos_token=False,  # Gemma: the template writes <bos>; the GPU rows' tokenizer has none
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    generating = []  # the seconds inside generate_until (the rest: task and dataset set-up)
    plain_generate = lm.generate_until

    def timed_generate(requests, *a, **k):
        begin = time.perf_counter()
        try:
            return plain_generate(requests, *a, **k)
        finally:
            generating.append(time.perf_counter() - begin)

    lm.generate_until = timed_generate
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[TASK], task_manager=TaskManager(include_path=str(task_dir)), log_samples=True, num_fewshot=0
    )
    total = time.perf_counter() - start
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    answers = [s["resps"][0][0] for s in samples]
    ids_equal = sum(lm.tok_encode(s["arguments"][0][0]) == _prompt_ids(tokenizer, p) for s, p in zip(samples, prompts))
    return {
        "tool": "lm-evaluation-harness",
        "setting": f"HFLM, peft adapter (unmerged), batch {args.lm_eval_batch}, generate_until",
        "precision": dtype,
        "questions": len(answers),
        "seconds": sum(generating),  # generation only: the ratio does not count lm_eval's set-up against it
        "simple_evaluate_seconds": total,
        "answers": [a.strip() for a in answers],
        "prompt_ids_equal": ids_equal,
    }


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    from jsquad_lora.encoding.tokens import prompt_ids

    return prompt_ids(tokenizer, prompt)


def row_eval_hf_loop(args, work: Path, dtype: str) -> dict:
    """What a notebook writes: the peft model, one question at a time, `generate`, cut at a newline."""
    import torch

    cfg, model, tokenizer = _eval_model(args, dtype, merge=False)
    dev, prompts, _ = _dev_prompts(args, cfg, tokenizer)
    prompts = prompts[: args.loop_questions]  # it is slow: the first questions only
    model.eval()
    answers = []
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)  # the prompt holds <bos>
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for stop in STOPS:
                text = text.split(stop)[0]
            answers.append(text.strip())
    seconds = time.perf_counter() - start
    return {
        "tool": "HF generate loop",
        "setting": "peft adapter (unmerged), one question at a time",
        "precision": dtype,
        "questions": len(prompts),
        "seconds": seconds,
        "answers": answers,
    }


ROWS = {
    "prepare-model": row_prepare_gpu_model,  # GPU rows only: their model, before their other rows
    "train-ours": row_train_ours,
    "train-trl": row_train_trl,
    "eval-ours-greedy-float32": lambda a, w: row_eval_ours(a, w, "float32", "greedy"),
    "eval-lm_eval-float32": lambda a, w: row_eval_lm_eval(a, w, "float32"),
    "eval-ours-greedy-bfloat16": lambda a, w: row_eval_ours(a, w, "bfloat16", "greedy"),
    "eval-lm_eval-bfloat16": lambda a, w: row_eval_lm_eval(a, w, "bfloat16"),
    "eval-ours-extractive-bfloat16": lambda a, w: row_eval_ours(a, w, "bfloat16", "extractive"),
    "eval-hf-loop-float32": lambda a, w: row_eval_hf_loop(a, w, "float32"),
}
CPU_ROWS = [name for name in ROWS if name != "prepare-model"]
#: on one CUDA GPU: rinna-3.6B shape, the rinna-3.6b-best recipe (bf16 weights, all-linear rsLoRA r=16,
#: padding-free batches of 16, eval batch 64); the one-at-a-time loop is left out there
GPU_ROWS = ["gpu-" + name for name in ROWS if name not in ("eval-ours-extractive-bfloat16", "eval-hf-loop-float32")]


# ---------------------------------------------------------------- driver


def _run_row(name: str, args) -> dict:
    """One row in a fresh process (the row reports its own peak RSS); its wall time."""
    out = args.work / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--row", name, *_pass_through(args)]
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    start = time.perf_counter()
    # CPU rows never see a GPU; GPU rows see it (or not, in a CPU smoke run)
    on_gpu = name.startswith("gpu-") and args.gpu_rows == "on"
    env = os.environ if on_gpu else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL if not args.verbose else None, stderr=subprocess.PIPE, env=env
    )
    _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"row {name} failed (exit {proc.returncode}):\n{stderr.decode()[-4000:]}")
    row = json.loads(out.read_text())
    row.update(name=name, process_seconds=wall)
    return row


def _pass_through(args) -> list[str]:
    return [
        f"--train-questions={args.train_questions}",
        f"--dev-questions={args.dev_questions}",
        f"--em-questions={args.em_questions}",
        f"--max-new-tokens={args.max_new_tokens}",
        f"--trl-batch={args.trl_batch}",
        f"--lm-eval-batch={args.lm_eval_batch}",
        f"--loop-questions={args.loop_questions}",
        f"--work={args.work}",
        f"--gpu-shape={args.gpu_shape}",
        f"--gpu-rows={args.gpu_rows}",
        *(["--profile-trl"] if args.profile_trl else []),
    ]


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _versions() -> dict:
    import torch

    names = ("jsquad-lora", "transformers", "peft", "trl", "lm_eval", "accelerate", "datasets")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return {"torch": torch.__version__, **found}


def _cpu() -> str:
    from jsquad_lora.util.devices import cpu_flags, cpu_name, usable_isa

    return (
        f"{cpu_name()} ({', '.join(cpu_flags()) or 'no bf16 flags'}; torch uses {usable_isa()}), {os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-questions", type=int, default=96, help="first N questions of the training sample")
    parser.add_argument("--dev-questions", type=int, default=120, help="first M dev questions for the eval rows")
    parser.add_argument("--em-questions", type=int, default=48, help="dev questions for each training row's EM check")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="the default recipe's eval.max_new_tokens")
    parser.add_argument("--trl-batch", type=int, default=8, help="TRL's per-device batch (examples)")
    parser.add_argument("--loop-questions", type=int, default=40, help="dev questions for the one-at-a-time loop")
    parser.add_argument("--lm-eval-batch", type=int, default=16, help="lm_eval's --batch_size")
    parser.add_argument("--rows", default=",".join(CPU_ROWS), help="CPU rows, a subset of: " + ", ".join(CPU_ROWS))
    parser.add_argument(
        "--gpu-rows",
        choices=("auto", "on", "off", "smoke"),
        default="auto",
        help="the rows on one CUDA GPU (rinna-3.6B shape): auto = where torch sees a GPU; "
        "smoke = run them on the CPU (with --gpu-shape tiny) to check the plumbing",
    )
    parser.add_argument("--gpu-shape", choices=("rinna-3.6b", "tiny"), default="rinna-3.6b")
    parser.add_argument("--profile-trl", action="store_true", help="profile TRL's second step (table in the row)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-vs-peers", help="scratch directory")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--verbose", action="store_true", help="show each row's own output")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work.resolve()
    if args.row:  # a child: one row, its result as JSON in the scratch directory
        args.gpu = args.row.startswith("gpu-")
        row = ROWS[args.row.removeprefix("gpu-")](args, args.work)
        row["peak_rss_mib"] = _peak_rss_mib()
        (args.work / f"{args.row}.json").write_text(json.dumps(row))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    if args.gpu_rows == "auto":
        args.gpu_rows = "on" if torch.cuda.is_available() else "off"
    begin = time.perf_counter()
    names = [n for n in args.rows.split(",") if n] + (GPU_ROWS if args.gpu_rows in ("on", "smoke") else [])
    rows = [_run_row(name, args) for name in names]
    if args.gpu_rows == "on":
        gpu_rows = f"{torch.cuda.get_device_name(0)}: rinna-3.6b-best recipe on {args.gpu_shape}-shaped random weights"
    elif args.gpu_rows == "smoke":
        gpu_rows = f"smoke run on the CPU ({args.gpu_shape} shape): plumbing only, not GPU numbers"
    else:
        gpu_rows = "empty: no CUDA GPU on this machine (torch.cuda.is_available() is False)"
    rows = [r for r in rows if r["tool"] != "set-up"]
    by = {r["name"]: r for r in rows}
    for r in rows:
        if "examples" in r:
            r["examples_per_second"] = r["examples"] / r["seconds"]
            r["example_tokens_per_second"] = r["example_tokens"] / r["seconds"]
        else:
            r["questions_per_second"] = r["questions"] / r["seconds"]
    for r in rows:
        reference = by.get(("gpu-" if r["name"].startswith("gpu-") else "") + "eval-lm_eval-float32")
        if "answers" in r and reference:
            r["answers_equal_to_lm_eval_float32"] = sum(a == b for a, b in zip(r["answers"], reference["answers"]))
    for r in rows:
        if "answers" in r:
            twin = by.get(r["name"].replace("ours-greedy", "lm_eval"))
            if twin is not None and twin is not r and "eval-ours-greedy" in r["name"]:
                r["differences"] = [
                    {"index": i, "ours": a, "lm_eval": b}
                    for i, (a, b) in enumerate(zip(r["answers"], twin["answers"]))
                    if a != b
                ]

    def ratio(ours: str, theirs: str, key: str) -> float | None:
        return by[ours][key] / by[theirs][key] if ours in by and theirs in by else None

    result = {
        "command": "JSQUAD_DIR=../shared/jsquad .venv-peers/bin/python benchmarks/bench_vs_peers.py "
        + " ".join(a for a in sys.argv[1:]),
        "cpu": _cpu(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "gpu_rows": gpu_rows,
        "versions": _versions(),
        "train_questions": args.train_questions,
        "dev_questions": args.dev_questions,
        "max_new_tokens": args.max_new_tokens,
        "train_ratio": ratio("train-ours", "train-trl", "examples_per_second"),
        "eval_ratio": ratio("eval-ours-greedy-float32", "eval-lm_eval-float32", "questions_per_second"),
        "eval_ratio_bfloat16": ratio("eval-ours-greedy-bfloat16", "eval-lm_eval-bfloat16", "questions_per_second"),
        "eval_ratio_vs_hf_loop": ratio("eval-ours-greedy-float32", "eval-hf-loop-float32", "questions_per_second"),
        "gpu_train_ratio": ratio("gpu-train-ours", "gpu-train-trl", "examples_per_second"),
        "gpu_eval_ratio": ratio("gpu-eval-ours-greedy-float32", "gpu-eval-lm_eval-float32", "questions_per_second"),
        "gpu_eval_ratio_bfloat16": ratio(
            "gpu-eval-ours-greedy-bfloat16", "gpu-eval-lm_eval-bfloat16", "questions_per_second"
        ),
        "total_seconds": time.perf_counter() - begin,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(_table(result))


def _table(result: dict) -> str:
    lines = [
        f"CPU: {result['cpu']}; versions: {result['versions']}",
        "| row | tool | setting | precision | throughput | tokens/s | peak RSS | quality / answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "examples_per_second" in r:
            rate = f"{r['examples_per_second']:.2f} ex/s ({r['examples']} in {r['seconds']:.0f} s)"
            toks = f"{r['example_tokens_per_second']:.0f}"
            quality = f"loss {r['train_loss']:.3f}, dev EM {r['dev_em']:.1f}"
        else:
            rate = f"{r['questions_per_second']:.2f} q/s ({r['questions']} in {r['seconds']:.0f} s)"
            toks = ""
            equal = r.get("answers_equal_to_lm_eval_float32")
            quality = f"{equal}/{r['questions']} = lm_eval float32" if equal is not None else ""
        lines.append(
            f"| {r['name']} | {r['tool']} | {r['setting']} | {r['precision']} | {rate} | {toks} | "
            f"{r['peak_rss_mib']:.0f} MiB | {quality} |"
        )
    lines.append(
        f"train_ratio {result['train_ratio']}, eval_ratio {result['eval_ratio']} "
        f"(bf16 {result['eval_ratio_bfloat16']}, vs HF loop {result['eval_ratio_vs_hf_loop']})"
    )
    lines.append(
        f"GPU rows: {result['gpu_rows']}; gpu_train_ratio {result['gpu_train_ratio']}, "
        f"gpu_eval_ratio {result['gpu_eval_ratio']} (bf16 {result['gpu_eval_ratio_bfloat16']})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
