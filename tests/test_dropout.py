"""LoRA's sparse-mask dropout: nn.Dropout's distribution (each element dropped independently with
probability p, the rest scaled by 1/(1-p)), reproducible from torch's seed, used by attach_lora."""

from __future__ import annotations

import math

import pytest
import torch

from jsquad_lora.model.dropout import SparseDropout, dropped_positions


@pytest.mark.parametrize("p", [0.05, 0.2])
def test_each_element_is_dropped_independently_with_probability_p(p):
    torch.manual_seed(0)
    n, draws = 1000, 400
    mask = torch.zeros(draws, n)
    for k in range(draws):
        mask[k, dropped_positions(n, p)] = 1
    total = draws * n
    sigma = math.sqrt(total * p * (1 - p))
    assert abs(mask.sum() - total * p) < 5 * sigma  # the rate
    per_position = mask.sum(0)  # every position equally often (the first and last ones too)
    assert abs(per_position[:50].mean() - draws * p) < 5 * math.sqrt(draws * p / 50)
    assert abs(per_position[-50:].mean() - draws * p) < 5 * math.sqrt(draws * p / 50)
    pairs = (mask[:, 1:] * mask[:, :-1]).sum()  # neighbours independent: both dropped at rate p²
    expected = draws * (n - 1) * p * p
    assert abs(pairs - expected) < 5 * math.sqrt(expected)
    counts = mask.sum(1)  # the count per draw is Binomial(n, p)
    assert abs(counts.var() - n * p * (1 - p)) < 0.25 * n * p * (1 - p)


def test_positions_are_sorted_distinct_and_in_range():
    torch.manual_seed(1)
    for n in (0, 1, 7, 100_000):
        positions = dropped_positions(n, 0.05)
        assert positions.dtype == torch.long
        assert torch.equal(positions, positions.unique())
        assert n == 0 or positions.numel() == 0 or (0 <= int(positions.min()) and int(positions.max()) < n)


def test_kept_elements_are_scaled_and_gradients_follow_the_mask():
    torch.manual_seed(2)
    x = torch.randn(64, 300, requires_grad=True)
    dropout = SparseDropout(0.1).train()
    y = dropout(x)
    kept = y != 0
    assert 0.05 < 1 - kept.float().mean() < 0.15
    torch.testing.assert_close(y[kept], x[kept] / 0.9)
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.9))


def test_eval_mode_and_p_zero_are_the_identity_and_draws_follow_the_seed():
    x = torch.randn(8, 16)
    assert SparseDropout(0.05).eval()(x) is x
    assert SparseDropout(0.0).train()(x) is x
    dropout = SparseDropout(0.3).train()  # above SPARSE_UP_TO: torch's own dropout, the same law
    torch.manual_seed(3)
    first = [dropout(x), SparseDropout(0.05).train()(torch.randn(100, 100))]
    torch.manual_seed(3)
    again = [dropout(x), SparseDropout(0.05).train()(torch.randn(100, 100))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    sparse = SparseDropout(0.05).train()
    assert not torch.equal(sparse(torch.ones(100, 100)), sparse(torch.ones(100, 100)))  # a new mask each call
    with pytest.raises(ValueError):
        SparseDropout(1.0)


def test_attach_lora_uses_it_for_every_lora_dropout():
    from jsquad_lora.config.schema import LoraSettings, ModelConfig
    from jsquad_lora.model.lora import attach_lora
    from jsquad_lora.model.sources.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(["あいう"])
    config = ModelConfig(tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_intermediate=64)
    model = attach_lora(build_tiny_model(config, tokenizer), LoraSettings(r=4, alpha=8, dropout=0.05))
    dropouts = [d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
    assert dropouts and all(type(d) is SparseDropout and d.p == 0.05 for d in dropouts)
    plain = attach_lora(build_tiny_model(config, tokenizer), LoraSettings(r=4, alpha=8, dropout=0.0))
    assert not any(isinstance(m, SparseDropout) for m in plain.modules())
