"""The training losses: on the answer + EOS only (the output layer applied where a token is labelled), or
with the prompt's tokens weighted in (`train.prompt_loss_weight`, for models trained from scratch)."""

from __future__ import annotations

import torch

from jsquad_lora.model.layers import unwrapped


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
    logits = head_logits(base.get_output_embeddings(), hidden[:, :-1][keep])
    softcap = getattr(base.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return _divided(loss, keep.sum(), num_items)


def head_logits(head, hidden: torch.Tensor) -> torch.Tensor:
    """`head(hidden)`, with a frozen head's weight cast to the autocast dtype once, not at every call.

    Autocast caches its casts of trainable leaf weights only, so a frozen output layer (Gemma 3's
    262k-word head, tied to the frozen embeddings) was copied to bfloat16 at every step: 168M
    weights, ~9 % of a default training step (BENCHMARKS.md, issue 24). The cached copy is made again
    when the weight changes (its version counter) or moves."""
    import torch.nn.functional as F

    device = hidden.device.type
    weight = getattr(head, "weight", None)
    if (
        not torch.is_autocast_enabled(device)
        or weight is None
        or weight.requires_grad
        or getattr(head, "bias", None) is not None
    ):
        return head(hidden)
    dtype = torch.get_autocast_dtype(device)
    key = (weight.data_ptr(), weight._version, weight.device, dtype)
    cached = getattr(head, "_autocast_weight", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, weight.detach().to(dtype))
        head._autocast_weight = cached  # an attribute, not a buffer: never saved, never moved
    return F.linear(hidden.to(dtype), cached[1])


def drop_cached_head(model) -> None:
    """Free `head_logits`' copy of the output layer (Gemma 3: 335 MB in bf16) once training is done."""
    head = unwrapped(model).get_output_embeddings()
    if head is not None and hasattr(head, "_autocast_weight"):
        del head._autocast_weight


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
