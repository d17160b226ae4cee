"""Training with transformers' Trainer: answer-only loss, length-grouped or padding-free batches,
gradient accumulation, safetensors checkpoints and exact resume.

Trainer (not a hand-written loop) because it already does accumulation, schedules, mixed
precision, checkpoints with optimizer/scheduler/RNG state and mid-epoch resume. We add only a
batch order that is a pure function of (seed, epoch), so a resumed run sees the very batches an
uninterrupted run would: resume neither repeats nor skips a step.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import TrainerCallback

from .collators import AnswerOnlyCollator, FlatteningCollator, PaddingMeter, SharedPrefixCollator, sliding_window
from .config import TrainConfig
from .distributed import barrier, is_main, summed, world_size
from .errors import InputError
from .files import write_jsonl
from .modeling import unwrapped
from .packing import SharedPrefixRow
from .tokenize import Encoded


class EpochBatchOrder(torch.utils.data.Sampler):
    """Indices in an order fixed by (seed, epoch). `length_grouped`: shuffled chunks of 64 batches
    are sorted by length and cut into batches whose order is shuffled; the one partial batch comes last."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, grouped: bool):
        self.lengths, self.batch_size, self.seed, self.grouped = list(lengths), batch_size, seed, grouped
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if not self.grouped:
            return iter(order)
        chunk = self.batch_size * 64
        batches = []
        for i in range(0, len(order), chunk):
            part = sorted(order[i : i + chunk], key=lambda j: -self.lengths[j])
            batches += [part[k : k + self.batch_size] for k in range(0, len(part), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        rng.shuffle(full)
        return iter([i for b in full + partial for i in b])


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


def weighted_prompt_loss(model, inputs: dict, prompt_weight: float):
    """Mean next-token loss where answer + EOS tokens weigh 1 and prompt tokens `prompt_weight`.

    The batch keeps its answer-only `labels`; prompt targets are the input ids where the label
    is -100, minus padding and any token whose position id does not follow its row predecessor's
    (the first token of a flattened example, of a shared-prefix branch), which it does not continue."""
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    outputs = model(**inputs)
    ids = inputs["input_ids"]
    prompt = labels == -100
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        prompt &= mask.bool()
    if "position_ids" in inputs:  # a target counts only after its own predecessor (position + 1)
        positions = inputs["position_ids"]
        prompt[:, 1:] &= positions[:, 1:] == positions[:, :-1] + 1
    targets = torch.where(prompt, ids, labels)[:, 1:]
    weights = torch.where(prompt, prompt_weight, (labels != -100).float())[:, 1:]
    logits = outputs.logits[:, :-1]
    losses = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    )
    return (losses * weights.reshape(-1)).sum() / weights.sum().clamp(min=1e-8), outputs


def answer_only_loss(model, inputs: dict, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """The causal-LM loss on the labelled tokens, with the output layer applied at those positions only.

    Equal to `model(**inputs).loss` (mean over labelled tokens, or their sum / `num_items`), but
    the LM head, which costs more than the whole body per token for a 262k vocabulary (Gemma 3
    270M: 168M weights vs 100M), runs on the ~10 answer tokens of a row instead of all ~150."""
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    base = unwrapped(model)
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    softcap = getattr(base.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return _divided(loss, keep.sum(), num_items)


def _divided(loss_sum: torch.Tensor, labelled: torch.Tensor, num_items: int | torch.Tensor | None) -> torch.Tensor:
    """A summed token loss as the model's own loss reports it: over `num_items` (the Trainer's token
    count of the accumulated batch) when given, else the mean over the batch's labelled tokens."""
    denominator = num_items if num_items is not None else labelled.clamp(min=1)
    return loss_sum / (denominator.to(loss_sum.device) if torch.is_tensor(denominator) else denominator)


def answer_only_loss_through_forward(model, inputs: dict, num_items: int | torch.Tensor | None = None):
    """`answer_only_loss` through the model's own forward (a DDP or FSDP wrapper must see the call):
    the output layer runs at the positions labelled in any row of the batch (`logits_to_keep`)."""
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    positions = (targets != -100).any(0).nonzero().squeeze(-1)
    logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits
    kept = targets[:, positions]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), kept.reshape(-1), reduction="sum")
    return _divided(loss, (kept != -100).sum(), num_items)


def load_full_weights(model, checkpoint: Path) -> None:
    """Every weight of a full fine-tuning checkpoint into `model`, or an error naming what did not match.

    transformers saves some models under legacy names (GPT-NeoX's `lm_head` as `embed_out`) and the
    Trainer's own resume loads without that renaming and without strictness, so a resumed run kept
    its initial output layer. The names are mapped back here the way saving renamed them."""
    from safetensors.torch import load_file

    own = model.state_dict()
    rename = {}
    try:
        from transformers.core_model_loading import revert_weight_conversion

        by_storage = {tensor.data_ptr(): name for name, tensor in own.items()}
        saved = revert_weight_conversion(model, dict(own))
        rename = {key: by_storage[t.data_ptr()] for key, t in saved.items() if t.data_ptr() in by_storage}
    except ImportError:  # a transformers without weight conversions saves under the model's own names
        pass
    index = checkpoint / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    state = {}
    for name in files:
        state.update({rename.get(k, k): v for k, v in load_file(checkpoint / name, device="cpu").items()})
    result = model.load_state_dict(state, strict=False)
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]  # tied weights share storage
    if missing or result.unexpected_keys:
        raise InputError(
            checkpoint,
            f"the checkpoint does not match the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}",
            fix="resume with the config that wrote this checkpoint, or start again with --overwrite",
        )


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (Trainer writes trainer_state.json last)."""
    done = [p for p in output_dir.glob("checkpoint-*") if _complete(p / "trainer_state.json")]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _complete(state_file: Path) -> bool:
    try:
        json.loads(state_file.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


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
    start = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        model.config.use_cache = use_cache
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
    from .files import atomic_dir
    from .modeling import save_trained

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
