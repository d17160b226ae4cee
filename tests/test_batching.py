"""Answer-only labels, EOS after every answer, prompt ids equal to the ones generation sees, truncation policy."""

from jsquad_lora.batching import AnswerOnlyCollator, encode_train_example, fit_question, padding_fraction, prompt_ids
from jsquad_lora.data import Question
from jsquad_lora.modeling import build_char_tokenizer
from jsquad_lora.prompts import render_prompt

BODY = "人体は、呼吸や心拍数を速め、血液組成を変化させて高度に順応することができる。しかし、8,000mを超えると、人体は適応できず、死に至ることもある。"
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
    assert cut.context[cut.answer_starts[0]:].startswith("8,000m")
    # at evaluation the answer is unknown: the passage loses its end
    cut, ids, _ = fit_question(Q, render, TOKENIZER, budget, around_answer=False)
    assert BODY.startswith(cut.context) and len(ids) <= budget


def test_collator_pads_right_with_ignored_labels():
    collator = AnswerOnlyCollator(TOKENIZER.pad_token_id)
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert abs(padding_fraction(collator) - 2 / 6) < 1e-12
