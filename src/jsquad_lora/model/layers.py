"""The model under a peft wrapper, and its output layer swapped for the length of a block."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


def unwrapped(model):
    """The transformers model under a peft wrapper (peft injects its layers into it in place), or `model`."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def output_layer_replaced(model, replacement: Callable) -> Iterator[None]:
    """Inside the block, the model's output layer is `replacement(head)`; no change where that is None."""
    base = unwrapped(model)
    head = base.get_output_embeddings()
    new = replacement(head) if head is not None else None
    if new is None:
        yield
        return
    base.set_output_embeddings(new)
    try:
        yield
    finally:
        base.set_output_embeddings(head)
