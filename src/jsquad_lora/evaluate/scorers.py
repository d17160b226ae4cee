"""The JSQuAD scorers (a registry), each a bit-exact mirror of its published reference.

- `jglue`: the SQuAD scorer as JGLUE patched it in transformers' `squad_metrics.py`
  (lower-case, rstrip "。", collapse whitespace; character-level F1; empty-answer rule of SQuAD v2).
- `stability`: the jp-stable harness's `lm_eval/jasquad/evaluate.py` (emoji removal, neologdn,
  MeCab tokens via fugashi + unidic-lite with punctuation tokens dropped; MeCab is handed at most
  MECAB_MAX_CHARS characters per call, since one very long text crashes it).
- `llmjp`: llm-jp-eval's exact match and char_f1 (NFKC, text before the first blank line, strip,
  first gold only, rapidfuzz token_sort_ratio).

Adding a scorer is one `@register_scorer` function in this file: a question score (em, f1) and the
aggregate its reference computes. Evaluation scores every registered scorer, `metrics.json`, the
report's columns and the CLI's `--metric` choices follow `SCORERS`.

Hand-written on purpose: no library ships these Japanese-specific variants. Arithmetic follows each
reference step by step (same summation order, same float operations), so totals agree to the
last digit. A question without a prediction scores 0; percentages are over all questions.

Questions without an answer (SQuAD v2's unanswerable ones) score as SQuAD v2 does in every scorer: 1 for an
empty prediction (the model abstained), else 0. `answerability_scores` adds SQuAD v2's HasAns / NoAns split
(EM and F1 of the jglue scorer on each part) where a split has such questions; JSQuAD has none, so its
numbers are the references' to the bit.
"""

from __future__ import annotations

import re
import statistics
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError, brief
from jsquad_lora.registry import SCORERS
from jsquad_lora.util.mecab import tagger

#: (prediction, gold answers) -> (exact match 0/1, F1 in [0, 1])
ScoreQuestion = Callable[[str, Sequence[str]], tuple[float, float]]
#: (per-question scores in data order, None where unanswered; the questions; the question scorer)
#: -> (EM, F1) in percent over all questions, in the reference's own arithmetic
Aggregate = Callable[[list[tuple[float, float] | None], Sequence[Question], ScoreQuestion], tuple[float, float]]


@dataclass(frozen=True)
class Scorer:
    name: str
    help: str
    question: ScoreQuestion
    aggregate: Aggregate


#: the scorer of the headline numbers, the per-question em/f1 in predictions files, and the charts
PRIMARY_SCORER = "jglue"


def register_scorer(name: str, help: str, aggregate: Aggregate) -> Callable[[ScoreQuestion], ScoreQuestion]:
    """Decorator: registers a question scorer and its aggregate under `name`."""

    def register(question: ScoreQuestion) -> ScoreQuestion:
        SCORERS.register(name, Scorer(name, help, question, aggregate))
        return question

    return register


@dataclass(frozen=True)
class Score:
    exact_match: float
    f1: float
    count: int

    def as_dict(self) -> dict[str, float | int]:
        return {"exact_match": self.exact_match, "f1": self.f1, "count": self.count}


def _sum_over_answered(each, questions, question) -> tuple[float, float]:
    """transformers' squad_metrics: 100.0 * sum(dict.values()) / total over the answered questions."""
    total = len(questions)
    ems = [s[0] for s in each if s is not None]
    f1s = [s[1] for s in each if s is not None]
    return 100.0 * sum(ems) / total, 100.0 * sum(f1s) / total


def _running_sums(each, questions, question) -> tuple[float, float]:
    """jasquad/evaluate.py: running sums in data order, then 100.0 * x / total."""
    exact_match = f1 = 0
    for s in each:
        if s is not None:
            exact_match += s[0]
            f1 += s[1]
    return 100.0 * exact_match / len(questions), 100.0 * f1 / len(questions)


def _mean_over_all(each, questions, question) -> tuple[float, float]:
    """llm-jp-eval: accuracy over all samples, statistics.mean of char_f1 (a missing answer is "")."""
    filled = [s if s is not None else question("", q.answers) for s, q in zip(each, questions)]
    total = len(questions)
    return 100 * (sum(s[0] for s in filled) / total), 100 * statistics.mean(s[1] for s in filled)


def jglue_normalize(text: str) -> str:
    """lower → rstrip('。') → collapse whitespace, in the patch's order (no punctuation removal)."""
    return " ".join(text.lower().rstrip("。").split())


def _jglue_f1(gold: str, prediction: str) -> float:
    gold_chars = list(jglue_normalize(gold))
    pred_chars = list(jglue_normalize(prediction))
    common = Counter(gold_chars) & Counter(pred_chars)
    num_same = sum(common.values())
    if len(gold_chars) == 0 or len(pred_chars) == 0:
        return int(gold_chars == pred_chars)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_chars)
    recall = 1.0 * num_same / len(gold_chars)
    return (2 * precision * recall) / (precision + recall)


@register_scorer(
    "jglue", "JGLUE's SQuAD scorer (transformers' squad_metrics.py as JGLUE patched it)", _sum_over_answered
)
def jglue_question(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    kept = [g for g in golds if jglue_normalize(g)] or [""]
    em = max(int(jglue_normalize(g) == jglue_normalize(prediction)) for g in kept)
    f1 = max(_jglue_f1(g, prediction) for g in kept)
    return em, f1


_EMOJI_RANGES = re.compile(
    "[\U0001f600-\U0001f64f\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff\U0001f1e0-\U0001f1ff\U00002702-\U000027b0]+"
)
_STABILITY_PUNCT = frozenset(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
    + string.punctuation
)


def stability_normalize(text: str) -> str:
    import emoji
    import neologdn

    text = "".join("" if emoji.is_emoji(c) else c for c in text)
    text = _EMOJI_RANGES.sub("", text)
    return " ".join(neologdn.normalize(text).split())


#: the most characters handed to MeCab in one call. fugashi + unidic-lite kill the process (SIGSEGV) on
#: one long text (the sizes: benchmarks/probes/mecab_limit.py, BENCHMARKS.md); this bound is two orders of
#: magnitude below them and far above any real answer.
MECAB_MAX_CHARS = 2_000
#: where a long text may be cut when it has no space: after punctuation, a token boundary in practice
_MECAB_BREAK = re.compile(r"[。、．，！？｡､「」『』（）.,!?;:()]")


def mecab_chunks(text: str, limit: int = MECAB_MAX_CHARS) -> list[str]:
    """`text` as pieces of at most `limit` characters, each cut at the last space of its window (MeCab
    drops spaces between tokens, so this changes no token), else after the last punctuation mark, else
    hard at `limit`. A text of at most `limit` characters is returned whole."""
    chunks, start = [], 0
    while len(text) - start > limit:
        window = text[start : start + limit]
        cut = window.rfind(" ")
        if cut > 0:
            chunks.append(window[:cut])
            start += cut + 1
            continue
        breaks = [m.end() for m in _MECAB_BREAK.finditer(window)]
        cut = breaks[-1] if breaks else limit
        chunks.append(window[:cut])
        start += cut
    chunks.append(text[start:])
    return chunks


def _stability_tokens(text: str) -> list[str]:
    """The reference's MeCab tokens of the normalised text, punctuation tokens dropped.

    What reaches MeCab is bounded: a normalised text longer than MECAB_MAX_CHARS (far longer than any
    answer; a runaway generation, a pasted document) is tagged piece by piece (`mecab_chunks`), since
    one call on ~190,000+ characters crashes the process. Every text within the bound is tagged in one
    call, exactly as the reference does."""
    parse = tagger("-Owakati").parse
    tokens = [t for chunk in mecab_chunks(stability_normalize(text)) for t in parse(chunk).split()]
    return [t for t in tokens if t not in _STABILITY_PUNCT]


def _stability_f1(prediction: str, gold: str) -> float:
    pred_tokens = _stability_tokens(prediction)
    gold_tokens = _stability_tokens(gold)
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


@register_scorer("stability", "the jp-stable harness's jasquad/evaluate.py (neologdn, MeCab tokens)", _running_sums)
def stability_question(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    em = max(stability_normalize(prediction) == stability_normalize(g) for g in golds)
    f1 = max(_stability_f1(prediction, g) for g in golds)
    return em, f1


def llmjp_normalize_prediction(text: str) -> str:
    return unicodedata.normalize("NFKC", text.split("\n\n")[0]).strip()


@register_scorer("llmjp", "llm-jp-eval's exact match and char_f1 (NFKC, first gold only)", _mean_over_all)
def llmjp_question(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    from rapidfuzz import fuzz

    pred = llmjp_normalize_prediction(prediction)
    gold = unicodedata.normalize("NFKC", golds[0])
    return int(pred == gold), fuzz.token_sort_ratio(pred, gold) / 100.0


def scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise InputError("--metric", f"Unknown scorer {brief(name)}", fix=f"Available: {', '.join(SCORERS)}")
    return SCORERS[name]


def no_answer_score(prediction: str) -> tuple[float, float]:
    """SQuAD v2's score of a question without an answer: EM = F1 = 1 when the model abstained (said nothing)."""
    return (1, 1.0) if not prediction.strip() else (0, 0.0)


def score_each(
    questions: Sequence[Question], predictions: dict[str, str], metric: str
) -> list[tuple[float, float] | None]:
    """Per-question (em, f1) in data order; None where the question has no prediction."""
    question = scorer(metric).question
    return [
        None
        if q.id not in predictions
        else question(predictions[q.id], q.answers)
        if q.answers
        else no_answer_score(predictions[q.id])
        for q in questions
    ]


def answerability_scores(questions: Sequence[Question], predictions: dict[str, str]) -> dict[str, dict]:
    """SQuAD v2's split of the primary scorer's EM/F1: `has_ans` (questions with an answer) and `no_ans`
    (without one: EM = the share the model abstained on), each over its own questions; {} where every
    question has an answer (JSQuAD)."""
    unanswerable = [q for q in questions if not q.answers]
    if not unanswerable:
        return {}
    answerable = [q for q in questions if q.answers]
    out = {"no_ans": score_predictions(unanswerable, predictions, PRIMARY_SCORER).as_dict()}
    if answerable:
        out["has_ans"] = score_predictions(answerable, predictions, PRIMARY_SCORER).as_dict()
    return dict(sorted(out.items()))


def score_predictions(questions: Sequence[Question], predictions: dict[str, str], metric: str) -> Score:
    """Percent EM and F1 over all `questions`, aggregated exactly as the metric's reference does."""
    if not questions:  # a mean over nothing: every reference divides by the question count
        raise ValueError("no questions to score")
    chosen = scorer(metric)
    each = score_each(questions, predictions, metric)

    def question(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
        return chosen.question(prediction, golds) if golds else no_answer_score(prediction)

    exact_match, f1 = chosen.aggregate(each, questions, question)
    return Score(exact_match, f1, len(questions))


#: chrF's character n-gram orders and the weight of recall (sacrebleu's chrF defaults: n = 1..6, beta = 2)
CHRF_ORDER, CHRF_BETA = 6, 2.0


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence chrF (Popović 2015, sacrebleu's defaults: whitespace removed, character n-grams of order 1-6
    averaged, F-beta with beta 2), in [0, 100]. Written here for task=question's score against the human question:
    a few lines, not a dependency."""
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    precisions, recalls = [], []
    for n in range(1, CHRF_ORDER + 1):
        h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        if not h or not r:
            continue
        common = sum((h & r).values())
        precisions.append(common / sum(h.values()))
        recalls.append(common / sum(r.values()))
    if not precisions:
        return 100.0 * (hyp == ref)
    p, r = statistics.fmean(precisions), statistics.fmean(recalls)
    if p + r == 0:
        return 0.0
    b2 = CHRF_BETA**2
    return 100.0 * (1 + b2) * p * r / (b2 * p + r)


def question_scores(questions: Sequence[Question], predictions: dict[str, str]) -> dict[str, float]:
    """task=question's scores against the human questions (each question's only gold): mean sentence chrF and the
    jglue scorer's character F1 and exact match, in percent over all questions."""
    pairs = [(predictions.get(q.id, ""), q.answers[0]) for q in questions]
    return {
        "chrf": statistics.fmean(chrf(p, g) for p, g in pairs) if pairs else 0.0,
        "char_f1": 100.0 * statistics.fmean(_jglue_f1(g, p) for p, g in pairs) if pairs else 0.0,
        "exact_match": 100.0 * statistics.fmean(jglue_normalize(p) == jglue_normalize(g) for p, g in pairs)
        if pairs
        else 0.0,
        "count": len(pairs),
    }
