"""Scorers on hand-made cases where the three disagree. Expected values are worked out by hand
from the definitions in SPEC §3 (the arithmetic is in the comments), never by calling the code."""

import json

import pytest

from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError
from jsquad_lora.evaluate.predictions import load_predictions
from jsquad_lora.evaluate.scorers import jglue_question, llmjp_question, score_predictions, stability_question

# (prediction, golds) → {metric: (em, f1)}
CASES = [
    # trailing 。: jglue strips it; stability keeps it for EM but drops the 。 token for F1;
    # llmjp: indel distance 1 over 3+2 chars → 1 - 1/5 = 0.8
    ("東京。", ["東京"], {"jglue": (1, 1.0), "stability": (0, 1.0), "llmjp": (0, 0.8)}),
    # full-width digits: only neologdn / NFKC fold them; jglue shares no character → F1 0
    ("８，０００ｍ", ["8,000m"], {"jglue": (0, 0.0), "stability": (1, 1.0), "llmjp": (1, 1.0)}),
    # emoji: stability drops it; jglue chars 2 common of 3 predicted → P 2/3, R 1 → F1 0.8; llmjp 1 - 1/5
    ("東京😀", ["東京"], {"jglue": (0, 0.8), "stability": (1, 1.0), "llmjp": (0, 0.8)}),
    # punctuation: jglue keeps 「」: P 2/4, R 1 → F1 2/3; stability drops 「 」 tokens → F1 1;
    # llmjp: distance 2 over 4+2 → 1 - 2/6 = 2/3
    ("「東京」", ["東京"], {"jglue": (0, 2 / 3), "stability": (0, 1.0), "llmjp": (0, 2 / 3)}),
    # empty prediction: zero everywhere
    ("", ["東京"], {"jglue": (0, 0.0), "stability": (0, 0.0), "llmjp": (0, 0.0)}),
    # case: only jglue lower-cases
    ("ABC", ["abc"], {"jglue": (1, 1.0), "stability": (0, 0.0), "llmjp": (0, 0.0)}),
    # surrounding whitespace: all three ignore it
    (" 東京 ", ["東京"], {"jglue": (1, 1.0), "stability": (1, 1.0), "llmjp": (1, 1.0)}),
    # multiple golds: jglue/stability take the best gold, llmjp only the first
    ("東京", ["大阪", "東京"], {"jglue": (1, 1.0), "stability": (1, 1.0), "llmjp": (0, 0.0)}),
    # jglue vs "小笠原": 3 common of 5 → P .6 R 1 → F1 .75 (vs the long gold: P 1 R .5 → 2/3; max .75)
    # llmjp vs first gold "小笠原": distance 2 over 8 → .75
    ("小笠原諸島", ["小笠原", "小笠原諸島を除く日本"], {"jglue": (0, 0.75), "llmjp": (0, 0.75)}),
    # llmjp keeps only the text before the first blank line; jglue joins it with a space
    ("東京\n\n説明", ["東京"], {"jglue": (0, 2 * (2 / 5) * 1 / (2 / 5 + 1)), "llmjp": (1, 1.0)}),
    # jglue drops golds that normalise to "" ("。" → ""); with none left, gold is "" and only "" matches
    ("", ["。"], {"jglue": (1, 1)}),
]
SCORERS = {"jglue": jglue_question, "stability": stability_question, "llmjp": llmjp_question}


@pytest.mark.parametrize("prediction,golds,expected", CASES)
def test_question_scores(prediction, golds, expected):
    for metric, (em, f1) in expected.items():
        got_em, got_f1 = SCORERS[metric](prediction, golds)
        assert got_em == em, (metric, prediction)
        assert got_f1 == pytest.approx(f1, abs=1e-12), (metric, prediction)


def _q(qid, *golds):
    return Question(qid, "t", "本文", "問い", tuple(golds), tuple(0 for _ in golds))


def test_missing_predictions_score_zero_over_all_questions():
    questions = [_q("a", "東京"), _q("b", "大阪"), _q("c", "京都")]
    predictions = {"a": "東京", "b": "大阪府"}
    # jglue: EM 1/3; F1 = (1 + 2·(2/3)·1/(2/3+1)) / 3 = (1 + 0.8) / 3
    score = score_predictions(questions, predictions, "jglue")
    assert score.count == 3
    assert score.exact_match == pytest.approx(100 / 3)
    assert score.f1 == pytest.approx(100 * 1.8 / 3)
    # llmjp: "大阪府" vs "大阪": distance 1 over 5 → 0.8; missing "c" → 0
    assert score_predictions(questions, predictions, "llmjp").f1 == pytest.approx(100 * 1.8 / 3)


def test_load_predictions_formats(tmp_path):
    questions = [_q("a", "東京"), _q("b", "大阪")]
    squad = tmp_path / "p.json"
    squad.write_text(json.dumps({"a": "東京"}, ensure_ascii=False), encoding="utf-8")
    assert load_predictions(squad, questions) == {"a": "東京"}
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"id": "a", "prediction": "東京", "em": 1}\n{"id": "b", "prediction": ""}\n', encoding="utf-8")
    assert load_predictions(jsonl, questions) == {"a": "東京", "b": ""}


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"a": 3}', "must be a string"),
        ('{"zzz": "x"}', "not questions of the data file"),
        ("[1, 2]", '"id"'),
        ('{"id": "a", "prediction": "x"}\n{"id": "a", "prediction": "y"}\n', "duplicate"),
        ('{"a": "x"', "invalid JSON"),
        ("", "empty"),
    ],
)
def test_bad_predictions_name_file_and_fix(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_predictions(path, [_q("a", "東京")])
    message = info.value.render()
    assert needle in message and str(path) in message and "fix:" in message
