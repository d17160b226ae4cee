"""A model's attention facts that training's and generation's masks share: which layers slide and their window
(Gemma 2/3 mix sliding-window and global layers), the shared-prefix mask, and the masks such a model takes.

Training's shared-prefix collator (collators.py), generation's prefix cache and span decoding's tree rows all
build 4-D boolean masks (True = attend) by hand, as transformers builds none for rows that branch; they read
these facts here, so the three agree with each other and with the model.
"""

from __future__ import annotations

#: the layer types of a model that mixes sliding-window and global attention (`config.layer_types`); such a
#: model takes its mask as a dict with one mask per layer type
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


def sliding_window(config) -> int | None:
    """The window of a model whose layers mix sliding-window and global attention (Gemma 2/3), else None."""
    if SLIDING_ATTENTION in (getattr(config, "layer_types", None) or ()):
        return getattr(config, "sliding_window", None)
    return None


def shared_prefix_mask(segments):
    """The [rows, tokens, tokens] boolean mask of shared-prefix rows, from each token's segment (0: the shared
    prefix, k > 0: branch k, -1: padding): causal, and a branch sees the prefix and itself only. Padding is seen
    by no token and attends to itself (no all-masked row)."""
    import torch

    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    mask = causal & (same | (segments[:, None, :] == 0)) & (segments[:, None, :] >= 0)
    mask |= torch.eye(width, dtype=torch.bool)
    return mask


def masks_by_layer_type(mask, positions, window: int | None):
    """A [rows, 1, tokens, tokens] mask as the model takes it: as it is without a sliding window; with one, a dict
    per layer type whose sliding layers' mask also drops keys `window` or more positions back, by position id
    (`positions`: [rows, tokens], on the mask's device)."""
    if not window:
        return mask
    near = positions[:, :, None] - positions[:, None, :] < window  # near keeps the diagonal
    return {FULL_ATTENTION: mask, SLIDING_ATTENTION: mask & near[:, None]}
