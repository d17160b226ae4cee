"""The bfloat16-screened float32 output layer: the same arg-max as the float32 head, also where
logits nearly tie, and exact float32 logits for the tokens it keeps."""

from __future__ import annotations

import pytest
import torch

from jsquad_lora.generate.screened_head import ScreenedHead, error_factor, screened_head


def _head(vocab: int, dim: int, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(dim, vocab, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, 1)
    return head


def test_the_error_bound_holds_for_bf16_logits():
    """The bound the screen relies on, checked against float64 logits on random and large vectors."""
    torch.manual_seed(1)
    for dim in (16, 640, 2048):
        w = torch.randn(4096, dim) * torch.rand(4096, 1) * 4
        h = torch.randn(64, dim) * 3
        exact = h.double() @ w.double().T
        rough = torch.nn.functional.linear(h.bfloat16(), w.bfloat16()).double()
        bound = error_factor(dim) / 2 * h.norm(dim=1, keepdim=True).double() * w.norm(dim=1).double()  # no safety
        assert ((exact - rough).abs() <= bound).all()


@pytest.mark.parametrize("rows", [1, 5, 32])
def test_arg_max_equals_the_float32_heads(rows):
    head = _head(5000, 64)
    torch.manual_seed(rows)
    hidden = torch.randn(rows, 3, 64) * 2
    with torch.no_grad():
        full = head(hidden)
        screened = ScreenedHead(head)(hidden)
    assert screened.shape == full.shape
    assert torch.equal(screened.argmax(-1), full.argmax(-1))
    kept = torch.isfinite(screened)
    torch.testing.assert_close(screened[kept], full[kept])  # the logits it keeps are float32's
    assert kept.float().mean() < 0.5  # and it kept few


@pytest.mark.parametrize("delta", [1e-4, -1e-4])
def test_near_ties_that_bf16_cannot_tell_apart_are_decided_in_float32(delta):
    """Two output rows whose logits for row 0 differ far below bf16's resolution: the screen keeps
    both and float32 decides, whichever of the two wins."""
    head = _head(1000, 64, seed=3)
    torch.manual_seed(4)
    hidden = torch.randn(8, 64) * 3
    with torch.no_grad():
        head.weight.mul_(0.05)
        direction = (hidden[0] / hidden[0].norm()).bfloat16().float()  # exactly a bf16 row
        head.weight[10] = direction
        head.weight[11] = direction * (1 + delta)  # the same bf16 row, a different float32 row
        assert torch.equal(head.weight[10].bfloat16(), head.weight[11].bfloat16())
        full, screened = head(hidden), ScreenedHead(head)(hidden)
    assert full[0].topk(2).indices.tolist() == ([11, 10] if delta > 0 else [10, 11])
    assert torch.equal(screened.argmax(-1), full.argmax(-1))
    assert torch.isfinite(screened[0, [10, 11]]).all()


def test_a_flat_distribution_falls_back_to_the_full_head():
    head = _head(400, 32)
    hidden = torch.randn(2, 32)
    with torch.no_grad():
        head.weight.fill_(0.01)  # every logit equal: every token is a candidate
        assert torch.equal(ScreenedHead(head)(hidden), head(hidden))


def test_the_screen_is_made_once_per_weight_and_remade_when_the_weight_changes():
    head = _head(300, 16)
    first = ScreenedHead(head).low
    assert ScreenedHead(head).low is first
    with torch.no_grad():
        head.weight.add_(1.0)  # bumps the weight's version
    assert ScreenedHead(head).low is not first
    assert "_jsquad_lora_screen" not in head.state_dict() and len(head.state_dict()) == 1


def test_the_head_is_restored_after_the_block_and_left_alone_where_it_does_not_apply(monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    from jsquad_lora.util import devices

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).eval()
    head = model.get_output_embeddings()
    monkeypatch.setattr(devices, "fast_cpu_bf16", lambda: True)
    with pytest.raises(RuntimeError), screened_head(model, True):
        assert isinstance(model.get_output_embeddings(), ScreenedHead)
        raise RuntimeError("inside the block")
    assert model.get_output_embeddings() is head
    with screened_head(model, False):
        assert model.get_output_embeddings() is head
    monkeypatch.setattr(devices, "fast_cpu_bf16", lambda: False)  # an AVX2-only CPU: bf16 is slow there
    with screened_head(model, True):
        assert model.get_output_embeddings() is head
    model.to(torch.bfloat16)
    monkeypatch.setattr(devices, "fast_cpu_bf16", lambda: True)
    with screened_head(model, True):  # already bfloat16: nothing to screen
        assert model.get_output_embeddings() is head


def test_non_finite_hidden_states_get_the_full_heads_logits():
    head = _head(300, 16)
    hidden = torch.randn(2, 16)
    hidden[0, 3] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(ScreenedHead(head)(hidden), head(hidden), equal_nan=True)


def test_many_positions_at_once_get_the_plain_head():
    head = _head(300, 16)
    hidden = torch.randn(2, ScreenedHead.MAX_ROWS, 16)  # a whole prompt's positions: no screen
    with torch.no_grad():
        assert torch.equal(ScreenedHead(head)(hidden), head(hidden))
