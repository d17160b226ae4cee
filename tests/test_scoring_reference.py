"""Agreement with independent transcriptions of the published reference scorers, on the real dev
set with adversarial predictions (golds with 。, full-width forms, emoji, spaces, truncations,
other questions' answers, missing ids). The transcriptions below follow the reference scripts
structure for structure (JGLUE's patched transformers squad_metrics; jp-stable's jasquad/evaluate.py),
so any drift in normalisation or in float summation order shows up as a last-digit difference."""

import collections
import random
import re
import string
from pathlib import Path

import emoji
import neologdn
import pytest
from fugashi import Tagger

from jsquad_lora.data.jsquad import load_split
from jsquad_lora.evaluate.scorers import score_predictions

DEV = Path(__file__).resolve().parents[2] / "shared" / "jsquad" / "valid-v1.3.json"


# ---- JGLUE (transformers squad_metrics with JGLUE's patch) ----
def _ref_jglue_norm(s):
    s = s.lower()
    s = s.rstrip("。")
    return " ".join(s.split())


def _ref_jglue_f1(a_gold, a_pred):
    gold_toks, pred_toks = list(_ref_jglue_norm(a_gold)), list(_ref_jglue_norm(a_pred))
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    p, r = 1.0 * num_same / len(pred_toks), 1.0 * num_same / len(gold_toks)
    return (2 * p * r) / (p + r)


def ref_jglue(questions, preds):
    exact, f1 = {}, {}
    for q in questions:
        golds = [a for a in q.answers if _ref_jglue_norm(a)] or [""]
        if q.id not in preds:
            continue
        exact[q.id] = max(int(_ref_jglue_norm(a) == _ref_jglue_norm(preds[q.id])) for a in golds)
        f1[q.id] = max(_ref_jglue_f1(a, preds[q.id]) for a in golds)
    total = len(questions)  # SPEC: over all questions of the data file
    return 100.0 * sum(exact.values()) / total, 100.0 * sum(f1.values()) / total


# ---- jp-stable harness (lm_eval/jasquad/evaluate.py) ----
_PUNCT = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
    + string.punctuation
)
_TAGGER = Tagger("-Owakati")


def _ref_stab_norm(s):
    s = "".join("" if emoji.is_emoji(c) else c for c in s)
    s = re.compile(
        "[\U0001f600-\U0001f64f\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff\U0001f1e0-\U0001f1ff\U00002702-\U000027b0]+"
    ).sub("", s)
    return " ".join(neologdn.normalize(s).split())


def _ref_stab_f1(pred, gold):
    pt = [t for t in _TAGGER.parse(_ref_stab_norm(pred)).split() if t not in list(_PUNCT)]
    gt = [t for t in _TAGGER.parse(_ref_stab_norm(gold)).split() if t not in list(_PUNCT)]
    num_same = sum((collections.Counter(pt) & collections.Counter(gt)).values())
    if num_same == 0:
        return 0
    p, r = 1.0 * num_same / len(pt), 1.0 * num_same / len(gt)
    return (2 * p * r) / (p + r)


def ref_stability(questions, preds):
    f1 = exact_match = total = 0
    for q in questions:
        total += 1
        if q.id not in preds:
            continue
        exact_match += max([_ref_stab_norm(preds[q.id]) == _ref_stab_norm(g) for g in q.answers])
        f1 += max([_ref_stab_f1(preds[q.id], g) for g in q.answers])
    return 100.0 * exact_match / total, 100.0 * f1 / total


def _perturb(rng, q, others):
    gold = rng.choice(q.answers)
    choice = rng.randrange(10)
    if choice == 0:
        return gold + "。"
    if choice == 1:
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in gold)  # full-width
    if choice == 2:
        return gold + "😀"
    if choice == 3:
        return f" {gold} "
    if choice == 4:
        return gold[: max(1, len(gold) // 2)]
    if choice == 5:
        return rng.choice(others).answers[0]
    if choice == 6:
        return "「" + gold + "」"
    if choice == 7:
        return gold.upper() + "\n\n説明"
    if choice == 8:
        return ""
    return gold


@pytest.mark.skipif(not DEV.exists(), reason="needs ../shared/jsquad")
def test_agrees_with_references_to_the_last_digit():
    questions = load_split(DEV).questions[:1500]
    rng = random.Random(0)
    preds = {q.id: _perturb(rng, q, questions) for q in questions if rng.random() > 0.05}
    ours = score_predictions(questions, preds, "jglue")
    assert (ours.exact_match, ours.f1) == ref_jglue(questions, preds)
    ours = score_predictions(questions, preds, "stability")
    assert (ours.exact_match, ours.f1) == ref_stability(questions, preds)
