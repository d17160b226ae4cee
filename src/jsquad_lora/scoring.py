"""The three JSQuAD scorers, each a bit-exact mirror of its published reference, and predictions I/O.

- `jglue`: the SQuAD scorer as JGLUE patched it in transformers' `squad_metrics.py`
  (lower-case, rstrip "。", collapse whitespace; character-level F1; empty-answer rule of SQuAD v2).
- `stability`: the jp-stable harness's `lm_eval/jasquad/evaluate.py` (emoji removal, neologdn,
  MeCab tokens via fugashi + unidic-lite with punctuation tokens dropped).
- `llmjp`: llm-jp-eval's exact match and char_f1 (NFKC, text before the first blank line, strip,
  first gold only, rapidfuzz token_sort_ratio).

Hand-written on purpose: no library ships these Japanese-specific variants. Arithmetic follows each
reference step by step (same summation order, same float operations), so totals agree to the
last digit. A question without a prediction scores 0; percentages are over all questions.
"""

from __future__ import annotations

import json
import re
import statistics
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal, Sequence

from .data import Question, json_type_name, read_json_file
from .errors import InputError

Metric = Literal["jglue", "stability", "llmjp"]
METRICS: tuple[Metric, ...] = ("jglue", "stability", "llmjp")


# --- jglue -------------------------------------------------------------------------------------


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


def jglue_question(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    kept = [g for g in golds if jglue_normalize(g)] or [""]
    em = max(int(jglue_normalize(g) == jglue_normalize(prediction)) for g in kept)
    f1 = max(_jglue_f1(g, prediction) for g in kept)
    return em, f1


# --- stability (jp-stable harness) -------------------------------------------------------------

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


@lru_cache(maxsize=1)
def _tagger():
    from fugashi import Tagger

    return Tagger("-Owakati")


def _stability_tokens(text: str) -> list[str]:
    return [t for t in _tagger().parse(stability_normalize(text)).split() if t not in _STABILITY_PUNCT]


def _stability_f1(prediction: str, gold: str) -> float:
    pred_tokens = _stability_tokens(prediction)
    gold_tokens = _stability_tokens(gold)
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def stability_question(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    em = max(stability_normalize(prediction) == stability_normalize(g) for g in golds)
    f1 = max(_stability_f1(prediction, g) for g in golds)
    return em, f1


# --- llmjp (llm-jp-eval) -----------------------------------------------------------------------


def llmjp_normalize_prediction(text: str) -> str:
    return unicodedata.normalize("NFKC", text.split("\n\n")[0]).strip()


def llmjp_question(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    from rapidfuzz import fuzz

    pred = llmjp_normalize_prediction(prediction)
    gold = unicodedata.normalize("NFKC", golds[0])
    return int(pred == gold), fuzz.token_sort_ratio(pred, gold) / 100.0


QUESTION_SCORERS: dict[Metric, Callable[[str, Sequence[str]], tuple[float, float]]] = {
    "jglue": jglue_question,
    "stability": stability_question,
    "llmjp": llmjp_question,
}


# --- aggregation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    exact_match: float
    f1: float
    count: int

    def as_dict(self) -> dict[str, float | int]:
        return {"exact_match": self.exact_match, "f1": self.f1, "count": self.count}


def score_each(
    questions: Sequence[Question], predictions: dict[str, str], metric: Metric
) -> list[tuple[float, float] | None]:
    """Per-question (em, f1) in data order; None where the question has no prediction."""
    scorer = QUESTION_SCORERS[metric]
    return [scorer(predictions[q.id], q.answers) if q.id in predictions else None for q in questions]


def score_predictions(questions: Sequence[Question], predictions: dict[str, str], metric: Metric) -> Score:
    """Percent EM and F1 over all `questions`, aggregated exactly as the metric's reference does."""
    if metric not in QUESTION_SCORERS:
        raise InputError("--metric", f"unknown metric {metric!r}", fix=f"use one of: {', '.join(METRICS)}")
    total = len(questions)
    each = score_each(questions, predictions, metric)
    if metric == "jglue":
        # transformers: 100.0 * sum(dict.values()) / total over the answered questions
        ems = [s[0] for s in each if s is not None]
        f1s = [s[1] for s in each if s is not None]
        return Score(100.0 * sum(ems) / total, 100.0 * sum(f1s) / total, total)
    if metric == "stability":
        # jasquad/evaluate.py: running sums in data order, then 100.0 * x / total
        exact_match = f1 = 0
        for s in each:
            if s is not None:
                exact_match += s[0]
                f1 += s[1]
        return Score(100.0 * exact_match / total, 100.0 * f1 / total, total)
    # llm-jp-eval: accuracy over all samples, statistics.mean of char_f1 (a missing answer is "")
    filled = [s if s is not None else llmjp_question("", q.answers) for s, q in zip(each, questions)]
    return Score(100 * (sum(s[0] for s in filled) / total), 100 * statistics.mean(s[1] for s in filled), total)


# --- predictions files -------------------------------------------------------------------------


def load_predictions(
    path: Path | str, questions: Sequence[Question] | None = None, *, allow_unknown_ids: bool = False
) -> dict[str, str]:
    """Read predictions: a SQuAD-style JSON object {id: answer}, or this tool's JSONL
    (one object per line with "id" and "prediction"). Ids not in `questions` are an error
    unless `allow_unknown_ids`."""
    path = Path(path)
    try:
        obj = read_json_file(path, "predictions file")
        rows = None
    except InputError as err:
        if not err.problem.startswith("invalid JSON"):
            raise
        obj, rows = None, _read_jsonl_rows(path)
    if rows is None:
        if isinstance(obj, list):
            rows = [(f"item {i}", r) for i, r in enumerate(obj)]
        elif isinstance(obj, dict) and "id" in obj and "prediction" in obj:
            rows = [("line 1", obj)]  # a one-line JSONL file
    predictions: dict[str, str] = {}
    if rows is not None:
        for where, row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("id"), str) or "prediction" not in row:
                raise InputError(
                    path,
                    'each record must be an object with "id" (string) and "prediction"',
                    where=where,
                    fix='write JSONL lines like {"id": "a1p0q0", "prediction": "..."} '
                    'or a JSON object {"a1p0q0": "..."}',
                )
            if row["id"] in predictions:
                raise InputError(
                    path,
                    f"duplicate prediction for id {row['id']!r}",
                    where=where,
                    fix="keep one prediction per question id",
                )
            predictions[row["id"]] = row["prediction"]
    elif isinstance(obj, dict):
        predictions = obj
    else:
        raise InputError(
            path,
            f"predictions must be a JSON object {{id: answer}} or JSONL, got {json_type_name(type(obj))}",
            fix='write {"<question id>": "<answer text>", ...}',
        )
    for qid, answer in predictions.items():
        if not isinstance(answer, str):
            raise InputError(
                path,
                f"the prediction must be a string, got {json.dumps(answer, ensure_ascii=False)[:60]}",
                where=f"id {qid}",
                fix='use "" for a question the model did not answer',
            )
    if questions is not None and not allow_unknown_ids:
        known = {q.id for q in questions}
        unknown = [qid for qid in predictions if qid not in known]
        if unknown:
            sample = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InputError(
                path,
                f"{len(unknown)} prediction id(s) are not questions of the data file: {sample}",
                where=f"id {unknown[0]}",
                fix="score against the data file these predictions were made for, or pass --ignore-unknown-ids",
            )
    return predictions


def _read_jsonl_rows(path: Path) -> list[tuple[str, object]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise InputError(
                path,
                f"invalid JSON on this line: {err.msg}",
                where=f"line {number}",
                fix="each line of a JSONL file must be one complete JSON object; remove or repair this line",
            ) from None
    return rows
