"""Trainer checkpoints: the newest complete one (the resume point), the incomplete ones removed after a
failed save, and a full fine-tune's weights loaded back strictly (older checkpoints' embed_out / lm_head
names mapped)."""

from __future__ import annotations

import json
from pathlib import Path

from jsquad_lora.errors import InputError


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


def newest_checkpoint_size(output_dir: Path) -> int | None:
    """Bytes of the newest complete checkpoint (what the next one will take, about), or None."""
    newest = latest_checkpoint(output_dir)
    return sum(p.stat().st_size for p in newest.rglob("*") if p.is_file()) if newest else None


def remove_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Delete the checkpoint directories whose save did not complete (no readable trainer_state.json)."""
    import shutil

    removed = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and not _complete(p / "trainer_state.json")]
    for path in removed:
        shutil.rmtree(path)
    return removed


def _complete(state_file: Path) -> bool:
    try:
        json.loads(state_file.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False
