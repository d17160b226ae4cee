"""Training against TRL's `SFTTrainer`: the default recipe on the first N questions of its training sample.

This tool's `train.trainer.train` (shared-prefix rows, LM head at the labelled positions, bf16 autocast
where the CPU has bf16 instructions) vs `SFTTrainer` given the very same token ids and answer masks
(pre-tokenised dataset, completion-only loss, padding-free batches, the same precision, gradient
checkpointing off, no checkpoints). `train-ours` also saves the adapter every evaluation row loads.
`--profile-trl` runs torch.profiler over TRL's second step (its table in the row; the row's timing is
then not a clean measurement). Rows run through bench_vs_peers.py (`--rows train-ours,train-trl`).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import harness

from peers import common

#: the packages a row needs beyond .venv (checked before any row starts)
NEEDS = {"train-trl": ("trl",)}


def row_train_ours(args, work: Path) -> dict:
    import torch

    from jsquad_lora.encoding.packing import share_prefixes
    from jsquad_lora.model.lora import attach_lora, merged
    from jsquad_lora.train.trainer import train
    from jsquad_lora.util.devices import train_in_bf16

    cfg = common.recipe(args, ["train.logging_steps=1"])  # every step's loss, as TRL logs it below
    model, tokenizer, _ = common.model_and_tokenizer(cfg, cfg.model.dtype)  # the recipe's master weights
    train_qs, examples = common.train_inputs(args, cfg, tokenizer)
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
        save_to=common.adapter(args),
        tokenizer=tokenizer,
    )
    em = common.dev_em(merged(model), tokenizer, args, cfg, args.em_questions)
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
    common.require(*NEEDS["train-trl"])
    import datasets
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from jsquad_lora.model.lora import lora_target_modules
    from jsquad_lora.util.devices import train_in_bf16

    cfg = common.recipe(args)
    model, tokenizer, _ = common.model_and_tokenizer(cfg, cfg.model.dtype)  # the recipe's master weights
    _, examples = common.train_inputs(args, cfg, tokenizer)
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
    with harness.Timer() as timer:
        output = trainer.train()
    merged_model = trainer.model.merge_and_unload()
    em = common.dev_em(merged_model, tokenizer, args, cfg, args.em_questions)
    return {
        **({"profile": profiled.table} if profiled else {}),
        "tool": "TRL SFTTrainer",
        "setting": f"padding-free batches of {sft.per_device_train_batch_size}, completion-only loss, "
        f"{'bf16' if bf16 else 'float32'}, no gradient checkpointing"
        + (", Liger kernels" if sft.use_liger_kernel else ""),
        "precision": "bf16 autocast" if bf16 else "float32",
        "examples": len(examples),
        "steps": trainer.state.global_step,
        "seconds": timer.seconds,
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


ROWS = {"train-ours": row_train_ours, "train-trl": row_train_trl}


def ratios(by: dict) -> dict:
    """Ours / TRL's examples per second, on the CPU and on the GPU."""
    return {
        "train_ratio": common.ratio(by, "train-ours", "train-trl", "examples_per_second"),
        "gpu_train_ratio": common.ratio(by, "gpu-train-ours", "gpu-train-trl", "examples_per_second"),
    }
