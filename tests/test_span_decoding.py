"""Span decoding (`generate/span_scoring.py`): the word boundaries and start candidates of Japanese text, and
each answer's rescoring against a brute-force oracle that runs every candidate prefix as its own plain forward
pass (no shared-prefix row), on tiny random GPT-NeoX models over four tokenizers and on a tiny Gemma 3 with
sliding-window layers and a logit softcap, where the shared-prefix mask and positions must be exact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_gemma import BODY, QUESTIONS, WINDOW, render, tiny_gemma
from test_gemma import TOKENIZER as GEMMA_TOKENIZER
from test_generation import PASSAGES, PROMPTS, TOKENIZERS, tiny_model
from test_generation import prompt as neox_prompt

from jsquad_lora.encoding.tokens import answer_ids, prompt_ids
from jsquad_lora.generate.decoding import DecodingConfig, ScoredAnswer, decoding_mode
from jsquad_lora.generate.greedy import end_token_ids, generate_answers, generate_scored
from jsquad_lora.generate.span_scoring import boundaries, rescore_spans, start_candidates
from jsquad_lora.generate.vocab import decode, token_vocab

pytestmark = pytest.mark.usefixtures("one_thread")

SIBERIA = "冬の間、シベリアから中国大陸にかけての広範囲を冷たく乾燥させる。次の文。"


def test_word_boundaries_follow_scripts_punctuation_and_hiragana():
    cuts = boundaries("シベリアから中国大陸。")
    pieces = [p for p in ("シベリアから中国大陸。"[a:b] for a, b in zip(cuts, cuts[1:]))]
    assert pieces == ["シベリア", "か", "ら", "中国大陸", "。"]
    assert boundaries("1990年にAIが") == [0, 4, 5, 6, 8, 9]


def test_start_candidates_stay_in_the_sentence_and_reach_the_gold_span():
    spans = [SIBERIA[a:b] for a, b in start_candidates(SIBERIA, "中国大陸")]
    assert spans[0].startswith("中国大陸")
    # the boundary error: the gold answer is a prefix of one branch, so some prefix scores it
    assert any(s.startswith("シベリアから中国大陸にかけて") for s in spans)
    assert all("。" not in s and "、" not in s for s in spans), spans  # never across the sentence's start or end
    assert start_candidates(SIBERIA, "ない答え") == [] and start_candidates(SIBERIA, "") == []
    # a second occurrence is tried too; the first two only
    twice = "犬と猫。犬と猫。犬と猫。"
    assert sorted({a for a, _ in start_candidates(twice, "猫")}) == [0, 1, 2, 4, 5, 6]  # 犬|と|猫, not the third


def ends(model, tokenizer, config: DecodingConfig) -> set[int]:
    return end_token_ids(model, tokenizer, config.stop_strings)[2]


def rescored(model, tokenizer, prompts, passages, texts, config: DecodingConfig, score=None) -> list[ScoredAnswer]:
    """`rescore_spans` of answers `texts` (each scored `score`), as greedy decoding calls it."""
    given = [ScoredAnswer(t, score) for t in texts]
    with torch.inference_mode():
        return rescore_spans(model, tokenizer, prompts, passages, given, config, ends(model, tokenizer, config))


def oracle(model, tokenizer, prompt: list[int], passage: str, answer: str, config: DecodingConfig):
    """The best (score, text) over every candidate prefix, each scored by its own plain forward pass."""
    _, _, end_ids = end_token_ids(model, tokenizer, config.stop_strings)
    branches = [answer_ids(tokenizer, answer)]
    branches += [
        answer_ids(tokenizer, passage[a:b])[: config.max_new_tokens] for a, b in start_candidates(passage, answer)
    ]
    branches = [b for b in branches if b]
    allowed = sorted(
        token_vocab(tokenizer).first_pieces(passage.encode()) | set(end_ids) | {t for b in branches for t in b}
    )
    column = {t: c for c, t in enumerate(allowed)}
    ends = [column[t] for t in sorted(end_ids) if t in column]
    best = None  # the model's own logits, softcap included: what span scoring must reproduce
    for b, branch in enumerate(branches):
        for n in range(1, len(branch) + 1):
            text = decode(tokenizer, branch[:n])
            if not text.strip() or "\ufffd" in text or text.strip() not in passage or "\n" in text or "。" in text:
                continue
            ids = torch.tensor([prompt + branch[:n]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(prompt) - 1 :, allowed].float()
            logp = F.log_softmax(logits, dim=-1)
            score = sum(float(logp[j, column[t]]) for j, t in enumerate(branch[:n]))
            score += float(torch.logsumexp(logp[n, ends], dim=-1))
            candidate = (score, -b, -n, text.strip())
            if best is None or candidate[:3] > best[:3]:
                best = candidate
    return best[0], best[3]


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def setup(request):
    tokenizer = TOKENIZERS[request.param]()
    return tokenizer, tiny_model(tokenizer, seed=3)


def test_each_rescored_answer_is_the_best_prefix_of_the_oracle(setup):
    tokenizer, model = setup
    config = DecodingConfig(max_new_tokens=12, batch_size=4, mode="span")
    # answers to rescore: a few characters of each passage (any span: the model's own answer is one case of it),
    # and one empty answer (an abstention)
    given = [passage[3:6] for passage in PASSAGES[:-1]] + [""]
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    answers = rescored(model, tokenizer, prompts, PASSAGES, given, config)
    assert answers[-1] == ScoredAnswer("", None)
    for prompt, passage, before, after in zip(prompts[:-1], PASSAGES, given, answers):
        score, text = oracle(model, tokenizer, prompt, passage, before, config)
        assert after.text == text and after.text in passage
        assert math.isclose(after.score, score, rel_tol=1e-4, abs_tol=1e-4)
    assert sum(a.text != b for a, b in zip(answers, given)) >= 3, "a random model should move some answers"


def test_span_mode_through_generation_equals_rescoring_the_extractive_answers(setup):
    tokenizer, model = setup
    extractive = DecodingConfig(max_new_tokens=12, batch_size=4, mode="extractive")
    span = DecodingConfig(max_new_tokens=12, batch_size=4, mode="span")
    greedy = generate_answers(model, tokenizer, PROMPTS, PASSAGES, extractive)
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    expected = rescored(model, tokenizer, prompts, PASSAGES, greedy, span)
    assert generate_answers(model, tokenizer, PROMPTS, PASSAGES, span) == [a.text for a in expected]
    scored = generate_scored(model, tokenizer, PROMPTS, PASSAGES, span)
    assert [a.text for a in scored] == [a.text for a in expected]
    assert decoding_mode("span").needs_passages and decoding_mode("span").backends == ("hf",)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_gemma_rows_with_sliding_windows_score_as_plain_forward_passes(softcap):
    """Three questions of one passage and one of another in one call: the passage's questions share one tree row."""
    tokenizer = GEMMA_TOKENIZER
    model = tiny_gemma(tokenizer, softcap=softcap, seed=7)
    prompts = [prompt_ids(tokenizer, render(q)) for q in QUESTIONS]
    passages = [q.context for q in QUESTIONS]
    assert passages[:3] == [BODY] * 3 and min(len(p) for p in prompts) > 2 * WINDOW  # the window cuts the prompt
    given = ["8,000m", "呼吸", "血液組成", "東アジア"]
    config = DecodingConfig(max_new_tokens=10, mode="span")
    answers = rescored(model, tokenizer, prompts, passages, given, config, score=-1.0)
    for prompt, passage, answer, after in zip(prompts, passages, given, answers):
        score, best = oracle(model, tokenizer, prompt, passage, answer, config)
        assert after.text == best
        assert math.isclose(after.score, score, rel_tol=1e-4, abs_tol=1e-4)


def test_questions_of_one_passage_in_one_row_score_as_alone(setup):
    tokenizer, model = setup
    passage = PASSAGES[1]
    questions = ["富士山の標高は？", "富士山はどこにある？", "日本の最高峰は？", "何山？"]
    prompts = [prompt_ids(tokenizer, neox_prompt(passage, q)) for q in questions]
    given = ["3776", "静岡県", "日本", "活火山"]
    config = DecodingConfig(max_new_tokens=12, mode="span")
    together = rescored(model, tokenizer, prompts, [passage] * 4, given, config)
    alone = [rescored(model, tokenizer, [p], [passage], [g], config)[0] for p, g in zip(prompts, given)]
    assert [a.text for a in together] == [a.text for a in alone]
    assert all(math.isclose(a.score, b.score, rel_tol=1e-4, abs_tol=1e-4) for a, b in zip(together, alone))
