import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "jsquad"
os.environ.setdefault("JSQUAD_DIR", str(SHARED))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: overrides that make the offline default small enough for tests (seconds, not minutes)
TINY_TEST = [
    "--config",
    "tiny-cpu",
    "model.tiny_layers=2",
    "model.tiny_hidden=64",
    "model.tiny_heads=4",
    "model.tiny_intermediate=128",
    "model.max_length=640",
    "data.train_limit=96",
    "data.eval_limit=24",
    "train.epochs=1",
    "train.batch_size=8",
    "train.logging_steps=2",
    "train.save_steps=4",
    "eval.batch_size=8",
    "eval.max_new_tokens=12",
]


def needs_data():
    return pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/jsquad")
