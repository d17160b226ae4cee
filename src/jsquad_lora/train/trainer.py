"""Training with transformers' Trainer: answer-only loss, length-grouped or padding-free batches,
gradient accumulation, safetensors checkpoints and exact resume.

Trainer (not a hand-written loop) because it already does accumulation, schedules, mixed
precision, checkpoints with optimizer/scheduler/RNG state and mid-epoch resume. We add only a
batch order that is a pure function of (seed, epoch), so a resumed run sees the very batches an
uninterrupted run would: resume neither repeats nor skips a step.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from jsquad_lora.config.schema import TrainConfig
from jsquad_lora.encoding.attention import sliding_window
from jsquad_lora.encoding.collators import AnswerOnlyCollator, FlatteningCollator, PaddingMeter, SharedPrefixCollator
from jsquad_lora.encoding.packing import SharedPrefixRow
from jsquad_lora.encoding.tokens import Encoded
from jsquad_lora.errors import InputError
from jsquad_lora.train.batch_order import EpochBatchOrder
from jsquad_lora.train.checkpoints import latest_checkpoint, load_full_weights
from jsquad_lora.train.frozen_casts import frozen_linears_cast
from jsquad_lora.train.losses import (
    answer_only_loss,
    answer_only_loss_through_forward,
    drop_cached_head,
    weighted_prompt_loss,
)
from jsquad_lora.util.distributed import barrier, is_main, summed, world_size
from jsquad_lora.util.files import write_jsonl


@dataclass(frozen=True)
class TrainResult:
    seconds: float
    tokens_per_second: float
    padding_fraction: float
    steps: int
    final_loss: float
    log: list[dict]

    def summary(self) -> dict:
        """What metrics.json keeps of the training (the loss curve goes to loss.jsonl)."""
        return {
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "padding_fraction": self.padding_fraction,
            "steps": self.steps,
            "final_loss": self.final_loss,
        }


class _LogAtCheckpoints(TrainerCallback):
    """Log the loss at every checkpoint step too. A resumed run's first logged loss is the mean since
    its checkpoint (the Trainer keeps no running loss in checkpoints): with a log at each checkpoint,
    the uninterrupted run's loss log is the same."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.save_steps and state.global_step % args.save_steps == 0:
            control.should_log = True
        return control


def _make_trainer(
    model,
    examples: list[Encoded] | list[SharedPrefixRow],
    cfg: TrainConfig,
    output_dir: Path,
    bf16: bool,
    tensorboard_dir: Path | None = None,
):
    import datasets
    from transformers import Trainer, TrainingArguments

    fields = [f.name for f in dataclasses.fields(examples[0])]
    dataset = datasets.Dataset.from_dict({name: [getattr(e, name) for e in examples] for name in fields})
    lengths = [len(e.input_ids) for e in examples]
    pad_id = model.config.pad_token_id or 0
    if cfg.batching == "shared_prefix":
        if not isinstance(examples[0], SharedPrefixRow):
            raise ValueError("train.batching=shared_prefix needs rows from packing.share_prefixes")
        if model.config._attn_implementation != "sdpa":
            raise InputError(
                "train.batching=shared_prefix",
                f"needs sdpa attention, the model uses {model.config._attn_implementation}",
                fix="set model.attn_implementation=sdpa or use train.batching=length_grouped",
            )
        collator = SharedPrefixCollator(pad_id, sliding_window(model.config))
    else:
        collator = FlatteningCollator() if cfg.batching == "padding_free" else AnswerOnlyCollator(pad_id)
    collator = PaddingMeter(collator)
    # the order of global batches (per-device batch x processes): the same batches, whatever the number
    # of processes; accelerate deals each global batch's per-device parts to the ranks
    order = EpochBatchOrder(lengths, cfg.batch_size * world_size(), cfg.seed, grouped=cfg.batching != "random")

    class _Trainer(Trainer):
        # a weighted prompt loss is a per-micro-batch mean: let Trainer divide by accumulation steps
        loss_is_scaled_for_ga = False if cfg.prompt_loss_weight else None

        def _get_train_sampler(self, train_dataset=None):
            return order

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            target = model if model is not None else self.model
            if hasattr(target, "peft_config"):  # the adapter is saved and loaded under its own names
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            load_full_weights(target, Path(resume_from_checkpoint))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if cfg.prompt_loss_weight:
                loss, outputs = weighted_prompt_loss(model, inputs, cfg.prompt_loss_weight)
                return (loss, outputs) if return_outputs else loss
            if return_outputs or not cfg.head_at_labels_only:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # like the model's own loss: a sum over the accumulated batch's tokens when the
            # Trainer counts them (it then skips its division by the accumulation steps)
            num_items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            if self.accelerator.unwrap_model(model) is not model:  # DDP/FSDP: its forward must run
                return answer_only_loss_through_forward(model, inputs, num_items)
            return answer_only_loss(model, inputs, num_items)

    check_fsdp_possible(cfg)
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        # bf16 autocast on the CPU, and a CPU process group (gloo), must be asked for this way
        use_cpu=not torch.cuda.is_available() and (bf16 or world_size() > 1),
        report_to=[],  # TensorBoard, when asked, through a callback writing to RUN/tensorboard (train())
        fsdp=cfg.fsdp,
        fsdp_config=cfg.fsdp_config or None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    callbacks = [_LogAtCheckpoints()]
    if "tensorboard" in cfg.report_to and is_main():
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(tensorboard_dir or output_dir / "tensorboard"))))
    trainer = _Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=callbacks)
    return trainer, collator


def check_fsdp_possible(cfg: TrainConfig) -> None:
    """`train.fsdp` needs CUDA GPUs: accelerate shards only CUDA processes, and on CPUs the processes
    would quietly train data-parallel instead."""
    if cfg.fsdp and not torch.cuda.is_available():
        raise InputError(
            "train.fsdp",
            "FSDP needs CUDA GPUs (accelerate shards only CUDA processes); on CPUs the processes train data-parallel",
            fix="set train.fsdp=false here, or run on GPUs",
        )


def train(
    model,
    examples: list[Encoded] | list[SharedPrefixRow],
    cfg: TrainConfig,
    checkpoint_dir: Path,
    loss_path: Path,
    *,
    bf16: bool = False,
    save_to: Path | None = None,
    tokenizer=None,
) -> TrainResult:
    """Train `model` in place, resuming from the newest checkpoint in `checkpoint_dir` if any; then
    save the adapter (or every weight) with `tokenizer` in `save_to`, atomically, if given.
    TensorBoard event files, when asked, go beside `loss_path` (tensorboard/)."""
    trainer, collator = _make_trainer(model, examples, cfg, checkpoint_dir, bf16, loss_path.parent / "tensorboard")
    resume_from = latest_checkpoint(checkpoint_dir)
    # No KV cache in training: a forward pass that builds one skips transformers' packed-sequence
    # mask, and the examples of a padding-free row would attend to each other (a model in eval
    # mode does this; tests/test_batching.py checks both the forward pass and the Trainer path).
    use_cache, model.config.use_cache = model.config.use_cache, False
    # one process without FSDP: FSDP gathers each weight into new storage at every step, so a copy kept per
    # weight would be made again at every call and only cost memory
    cast_once = bf16 and world_size() == 1 and not cfg.fsdp
    start = time.perf_counter()
    try:
        with frozen_linears_cast(model, cast_once):
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        model.config.use_cache = use_cache
        drop_cached_head(model)
        # the Trainer's accelerate wraps `forward` in bf16 autocast for training: unwrapped here, so that the
        # evaluation after tuning runs in eval.dtype, as `ask` and `serve` of the saved run do
        from accelerate.utils import extract_model_from_parallel

        extract_model_from_parallel(model, keep_fp32_wrapper=False)
    seconds = time.perf_counter() - start
    log = [
        {k: row[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in row}
        for row in trainer.state.log_history
        if "loss" in row
    ]
    if is_main():
        write_jsonl(loss_path, log)
    if save_to is not None:
        _save(trainer, model, tokenizer, save_to)
    final_loss = log[-1]["loss"] if log else float(output.training_loss)
    real, processed = summed(collator.real_tokens, collator.batch_tokens)
    return TrainResult(
        seconds=seconds,
        tokens_per_second=real / seconds if seconds else 0.0,
        padding_fraction=1.0 - real / processed if processed else 0.0,
        steps=trainer.state.global_step,
        final_loss=final_loss,
        log=log,
    )


def _save(trainer, model, tokenizer, directory: Path) -> None:
    """The trained adapter (or full weights) and tokenizer, as safetensors, in one rename. Under FSDP
    every rank takes part (the Trainer gathers the sharded weights); otherwise the main process saves."""
    from jsquad_lora.model.lora import save_trained
    from jsquad_lora.util.files import atomic_dir

    if not trainer.is_fsdp_enabled:
        if is_main():
            with atomic_dir(directory) as tmp:
                save_trained(model, tokenizer, tmp)
        barrier()
        return
    staging = directory.with_name(f".{directory.name}.fsdp.tmp")
    if is_main():
        shutil.rmtree(staging, ignore_errors=True)
    barrier()
    trainer.save_model(str(staging))  # the main process writes the gathered weights
    if is_main():
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle: not kept beside safetensors weights
        tokenizer.save_pretrained(staging)
        with atomic_dir(directory) as tmp:
            for entry in staging.iterdir():
                entry.rename(tmp / entry.name)
        shutil.rmtree(staging, ignore_errors=True)
    barrier()
