"""Answer-only labels, EOS after every answer, prompt ids equal to the ones generation sees, truncation policy."""

import pytest

from jsquad_lora.data.question import Question
from jsquad_lora.encoding.collators import AnswerOnlyCollator, PaddingMeter
from jsquad_lora.encoding.tokens import encode_train_example, fit_question, prompt_ids
from jsquad_lora.model.sources.tiny import build_char_tokenizer
from jsquad_lora.prompts.templates import render_prompt

BODY = (
    "人体は、呼吸や心拍数を速め、血液組成を変化させて高度に順応することができる。"
    "しかし、8,000mを超えると、人体は適応できず、死に至ることもある。"
)
Q = Question("q1", "高度", BODY, "何mを超えると適応できなくなるか?", ("8,000m",), (BODY.index("8,000m"),))
TOKENIZER = build_char_tokenizer([render_prompt(Q, "seed", with_answer=True)])


def render(q):
    return render_prompt(q, "seed")


def test_labels_cover_exactly_answer_and_eos():
    example, truncated = encode_train_example(Q, render, TOKENIZER, max_length=1024)
    assert not truncated
    prompt = prompt_ids(TOKENIZER, render(Q))
    assert example.input_ids[: len(prompt)] == prompt  # generation sees the same prompt ids
    supervised = [t for t in example.labels if t != -100]
    assert TOKENIZER.decode(supervised[:-1]) == "8,000m"
    assert supervised[-1] == TOKENIZER.eos_token_id
    assert example.labels[: len(prompt)] == [-100] * len(prompt)
    assert render(Q).endswith("システム: ")  # the trailing space stays in the prompt, not in the label


def test_truncation_keeps_answer_span():
    full = len(prompt_ids(TOKENIZER, render(Q)))
    budget = full - 40
    cut, ids, truncated = fit_question(Q, render, TOKENIZER, budget, around_answer=True)
    assert truncated and len(ids) <= budget
    assert "8,000m" in cut.context and cut.context in BODY
    assert cut.context[cut.answer_starts[0] :].startswith("8,000m")
    # at evaluation the answer is unknown: the passage loses its end
    cut, ids, _ = fit_question(Q, render, TOKENIZER, budget, around_answer=False)
    assert BODY.startswith(cut.context) and len(ids) <= budget


def test_collator_pads_right_with_ignored_labels():
    collator = PaddingMeter(AnswerOnlyCollator(TOKENIZER.pad_token_id))
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert abs(collator.padding_fraction - 2 / 6) < 1e-12


def test_padding_free_batch_gives_the_padded_loss():
    """Flattened rows (position ids restart per example) must not attend across examples: the
    summed answer loss equals the padded batch's, example by example."""
    import torch

    from jsquad_lora.config.schema import ModelConfig
    from jsquad_lora.encoding.collators import FlatteningCollator
    from jsquad_lora.model.sources.tiny import build_tiny_model

    torch.manual_seed(0)
    model = build_tiny_model(
        ModelConfig(tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_intermediate=64), TOKENIZER
    ).eval()
    short = Question("q2", "", BODY[:40], "何が変化するか?", ("血液組成",), (BODY.index("血液組成"),))
    feats = [dict(vars(encode_train_example(q, render, TOKENIZER, 1024)[0])) for q in (Q, short)]
    with torch.no_grad():
        flat = FlatteningCollator()(feats)
        assert flat["input_ids"].shape[0] == 1 and flat["position_ids"][0].tolist().count(0) == 2
        # use_cache=False as in training (training.train sets it): a cache turns the packed mask off
        flat_logits = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False).logits[0]
        for k, f in enumerate(feats):
            alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            offset = sum(len(g["input_ids"]) for g in feats[:k])
            torch.testing.assert_close(flat_logits[offset : offset + len(f["input_ids"])], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("prompt_loss_weight", [0.0, 0.5])
def test_padding_free_training_matches_padded_training(tmp_path, prompt_loss_weight):
    """Through the Trainer: same batches (same order and seed), padded vs flattened rows;
    the logged losses agree (they would not if examples of a flattened row saw each other)."""
    import torch

    from jsquad_lora.config.schema import ModelConfig, TrainConfig
    from jsquad_lora.model.sources.tiny import build_tiny_model
    from jsquad_lora.train.trainer import train

    short = Question("q2", "", BODY[:40], "何が変化するか?", ("血液組成",), (BODY.index("血液組成"),))
    examples = [encode_train_example(q, render, TOKENIZER, 1024)[0] for q in (Q, short) * 4]
    logs = {}
    for batching in ("length_grouped", "padding_free"):
        torch.manual_seed(0)
        model = build_tiny_model(
            ModelConfig(tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_intermediate=64), TOKENIZER
        )
        cfg = TrainConfig(
            epochs=1,
            batch_size=4,
            learning_rate=1e-3,
            batching=batching,
            logging_steps=1,
            save_steps=100,
            seed=3,
            prompt_loss_weight=prompt_loss_weight,
        )
        logs[batching] = [
            row["loss"] for row in train(model, examples, cfg, tmp_path / batching, tmp_path / f"{batching}.jsonl").log
        ]
    assert len(logs["length_grouped"]) == 2
    assert logs["length_grouped"] == pytest.approx(logs["padding_free"], rel=1e-4)


def test_weighted_prompt_loss():
    """Weight 0 is the answer-only loss, weight 1 the plain LM loss over the whole sequence,
    and padded and flattened batches give the same weighted loss."""
    import torch

    from jsquad_lora.config.schema import ModelConfig
    from jsquad_lora.encoding.collators import FlatteningCollator
    from jsquad_lora.model.sources.tiny import build_tiny_model
    from jsquad_lora.train.losses import weighted_prompt_loss

    torch.manual_seed(0)
    model = build_tiny_model(
        ModelConfig(tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_intermediate=64), TOKENIZER
    ).eval()
    model.config.use_cache = False
    short = Question("q2", "", BODY[:40], "何が変化するか?", ("血液組成",), (BODY.index("血液組成"),))
    feats = [dict(vars(encode_train_example(q, render, TOKENIZER, 1024)[0])) for q in (Q, short)]
    with torch.no_grad():
        one = AnswerOnlyCollator(TOKENIZER.pad_token_id)(feats[:1])
        assert weighted_prompt_loss(model, one, 0.0)[0].item() == pytest.approx(model(**one).loss.item(), rel=1e-5)
        full = model(input_ids=one["input_ids"], labels=one["input_ids"]).loss.item()
        assert weighted_prompt_loss(model, one, 1.0)[0].item() == pytest.approx(full, rel=1e-5)
        padded = weighted_prompt_loss(model, AnswerOnlyCollator(TOKENIZER.pad_token_id)(feats), 0.5)[0].item()
        flat = weighted_prompt_loss(model, FlatteningCollator()(feats), 0.5)[0].item()
        assert padded == pytest.approx(flat, rel=1e-5)


def test_shared_prefix_rows_equal_separate_examples():
    """Questions of one passage packed as prefix + branches give each branch exactly the logits
    it gets alone, and the same answer-only and weighted losses as the padded batch."""
    import torch

    from jsquad_lora.config.schema import ModelConfig
    from jsquad_lora.encoding.collators import SharedPrefixCollator
    from jsquad_lora.encoding.packing import share_prefixes
    from jsquad_lora.model.sources.tiny import build_tiny_model
    from jsquad_lora.train.losses import weighted_prompt_loss

    torch.manual_seed(0)
    model = build_tiny_model(
        ModelConfig(tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_intermediate=64), TOKENIZER
    ).eval()
    model.config.use_cache = False
    questions = [
        Q,
        Question("q3", "", BODY, "何を速めるか?", ("呼吸や心拍数",), (BODY.index("呼吸や心拍数"),)),
        Question("q4", "", BODY, "何が変化するか?", ("血液組成",), (BODY.index("血液組成"),)),
    ]
    other = Question("q2", "", BODY[:40], "何が変化するか?", ("血液組成",), (BODY.index("血液組成"),))
    examples = [encode_train_example(q, render, TOKENIZER, 1024)[0] for q in (*questions, other)]
    rows = share_prefixes(examples, [q.context for q in (*questions, other)])
    assert len(rows) == 2 and len(rows[0].input_ids) < sum(len(e.input_ids) for e in examples[:3]) / 2
    batch = SharedPrefixCollator(TOKENIZER.pad_token_id)([vars(r) for r in rows])
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=batch["attention_mask"]
        ).logits
        row = rows[0]
        for k, e in enumerate(examples[:3], 1):
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            where = [i for i, s in enumerate(row.segments) if s in (0, k)]
            torch.testing.assert_close(logits[0, where], alone, atol=1e-5, rtol=1e-4)
        padded = AnswerOnlyCollator(TOKENIZER.pad_token_id)([vars(e) for e in examples])
        assert model(**batch).loss.item() == pytest.approx(model(**padded).loss.item(), rel=1e-5)
        # the prompt loss counts the shared prefix once, so compare a single example's row
        single = share_prefixes(examples[3:], ["x"])
        one = SharedPrefixCollator(TOKENIZER.pad_token_id)([vars(r) for r in single])
        alone = AnswerOnlyCollator(TOKENIZER.pad_token_id)([vars(examples[3])])
        assert weighted_prompt_loss(model, one, 0.5)[0].item() == pytest.approx(
            weighted_prompt_loss(model, alone, 0.5)[0].item(), rel=1e-5
        )


def test_shared_prefix_rows_stop_at_max_tokens():
    """A row stops growing at `max_tokens` (attention costs its width squared); an example longer
    than the cap still gets a row of its own; every example lands in exactly one row."""
    from jsquad_lora.encoding.packing import share_prefixes

    questions = [
        Question(f"q{k}", "", BODY, BODY[k : k + 3] + "は何か?", ("血液組成",), (BODY.index("血液組成"),))
        for k in range(6)
    ]
    examples = [encode_train_example(q, render, TOKENIZER, 1024)[0] for q in questions]
    uncapped = share_prefixes(examples, [BODY] * 6)
    assert len(uncapped) == 1
    prefix = uncapped[0].segments.count(0)
    branch = len(examples[0].input_ids) - prefix
    capped = share_prefixes(examples, [BODY] * 6, max_tokens=prefix + 2 * branch)
    assert [max(r.segments) for r in capped] == [2, 2, 2]
    assert all(len(r.input_ids) <= prefix + 2 * branch for r in capped)
    tiny = share_prefixes(examples, [BODY] * 6, max_tokens=5)
    assert len(tiny) == 6 and all(r.input_ids == e.input_ids for r, e in zip(tiny, examples))
