"""The report's tables, each as (head, rows) of plain text (`render.py` writes them as Markdown or HTML): our QA
runs, question-generation runs apart from them, SQuAD v2's split, paired comparisons, the published references,
example predictions, and each run's training sources. Pure; a value of the wrong type in a run file shows "—".

A question-generation run (`RunSummary.task == "question"`) is kept out of every QA table: its jglue/stability/
llmjp entries score a generated question against the human one, which is no JSQuAD QA score.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from jsquad_lora.evaluate.scorers import SCORERS
from jsquad_lora.report.references import REFERENCE_SCORES
from jsquad_lora.report.summary import STAGES, RunSummary, _dig, _is_right, _number

Table = tuple[list[str], list[list[str]]]

#: what the question-generation table says of its scores (shown above it)
QUESTION_NOTE = (
    "Runs with task: question (passage + answer → question), scored against the held-out human questions of "
    "their evaluation split (each question's only reference), in percent: chrF (character n-grams 1-6, "
    "sacrebleu's defaults), the jglue scorer's character F1 and exact match. These are not QA scores: these runs "
    "are left out of the tables above, the paired comparisons and the EM chart."
)


def number_cell(value: Any, spec: str = ".2f") -> str:
    """A number formatted, or "—" for anything else (absent, or of the wrong type in a run file)."""
    number = _number(value)
    return "—" if number is None else format(number, spec)


def _count(value: Any) -> str:
    """A count as "1,234", or "—" where it is not a non-negative integer."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return f"{value:,}" if ok else "—"


def qa_runs(runs: Sequence[RunSummary]) -> list[RunSummary]:
    """The runs that answer questions (every run but the question-generation ones)."""
    return [run for run in runs if run.task != "question"]


def runs_table(runs: Sequence[RunSummary]) -> Table:
    head = ["run", "model", "recipe", "stage"]
    head += [f"{s} {k}" for s in SCORERS for k in ("EM", "F1")]
    head += ["questions", "train s", "tokens/s", "eval s"]
    rows = []
    for run in qa_runs(runs):
        for stage in STAGES:
            if not isinstance(run.metrics.get(stage), dict):
                continue
            row = [run.name, run.model_name, str(run.metrics.get("recipe", "?")), stage]
            row += [number_cell(run.score(stage, s, k)) for s in SCORERS for k in ("exact_match", "f1")]
            count = next((c for s in SCORERS if isinstance(c := _dig(run.metrics, stage, s, "count"), int)), None)
            row.append("—" if count is None else str(count))
            train = run.metrics.get("train") if stage == "after" else None
            row += [number_cell(_dig(train, "seconds"), ".1f"), number_cell(_dig(train, "tokens_per_second"), ",.0f")]
            row.append(number_cell(_dig(run.metrics, "eval" if stage == "after" else "eval_before", "seconds"), ".1f"))
            rows.append(row)
    return head, rows


def question_table(runs: Sequence[RunSummary]) -> Table | None:
    """The question-generation runs' scores against the human questions (metrics.json's stage "question"
    entry); None where no run generates questions."""
    head = ["run", "model", "stage", "chrF", "char F1", "exact match", "questions"]
    rows = []
    for run in runs:
        if run.task != "question":
            continue
        for stage in STAGES:
            if isinstance(scores := _dig(run.metrics, stage, "question"), dict):
                row = [run.name, run.model_name, stage]
                row += [number_cell(scores.get(k)) for k in ("chrf", "char_f1", "exact_match")]
                rows.append(row + [_count(scores.get("count"))])
    return (head, rows) if rows else None


def answerability_table(runs: Sequence[RunSummary]) -> Table | None:
    """SQuAD v2's split (jglue scorer) for the runs evaluated on questions without answers: HasAns EM/F1, and
    NoAns EM = the share of those questions the model abstained on; None where no run has one."""
    head = ["run", "stage", "HasAns EM", "HasAns F1", "HasAns questions", "NoAns EM (abstained)", "NoAns questions"]
    rows = []
    for run in qa_runs(runs):
        for stage in STAGES:
            if not isinstance(_dig(run.metrics, stage, "no_ans"), dict):
                continue
            count = _dig(run.metrics, stage, "has_ans", "count")
            rows.append(
                [
                    run.name,
                    stage,
                    number_cell(run.score(stage, "has_ans", "exact_match")),
                    number_cell(run.score(stage, "has_ans", "f1")),
                    "—" if count is None else str(count),
                    number_cell(run.score(stage, "no_ans", "exact_match")),
                    str(_dig(run.metrics, stage, "no_ans", "count")),
                ]
            )
    return (head, rows) if rows else None


def paired_table(runs: Sequence[RunSummary]) -> tuple[list[str], list[list[str]], bool] | None:
    """Paired comparisons on the same question ids (`report.paired`) of the QA runs: each run before → after
    tuning, and each two runs (after tuning, else before) on the questions both evaluated, with whether every row
    knew its questions' passages; None where there is none. A row that does not says so beside its interval."""
    from jsquad_lora.report.paired import em_by_id, paired_comparison, passages_of

    runs = qa_runs(runs)
    head = ["A", "B", "questions (passages)", "EM A", "EM B", "ΔEM (B − A)", "95% interval", "right only in A"]
    head += ["right only in B", "McNemar p"]
    pairs = []
    for run in runs:
        if "before" in run.predictions and "after" in run.predictions:
            pairs.append((run, "before", run, "after"))
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            stage_a = "after" if "after" in a.predictions else "before"
            stage_b = "after" if "after" in b.predictions else "before"
            if stage_a in a.predictions and stage_b in b.predictions:
                pairs.append((a, stage_a, b, stage_b))
    rows, by_passage = [], True
    for a, stage_a, b, stage_b in pairs:
        contexts = {qid: q.context for run in (a, b) for qid, q in run.questions.items()}
        passages = passages_of((a.predictions[stage_a], b.predictions[stage_b]), contexts)
        found = paired_comparison(em_by_id(a.predictions[stage_a]), em_by_id(b.predictions[stage_b]), passages)
        if found is None:
            continue
        low, high = found["ci95"]
        count, interval = _paired_counts(found), f"[{low:+.2f}, {high:+.2f}]"
        if unknown := found["unknown_passages"]:
            by_passage = False
            interval += (
                " paired by question: the passages are unknown, so the interval is too narrow"
                if unknown == found["questions"]
                else f" {unknown} questions paired alone: their passages are unknown, so the interval is too narrow"
            )
        rows.append(
            [
                f"{a.name} ({stage_a})",
                f"{b.name} ({stage_b})",
                count,
                number_cell(found["em_a"]),
                number_cell(found["em_b"]),
                f"{found['delta']:+.2f}",
                interval,
                str(found["only_a"]),
                str(found["only_b"]),
                f"{found['mcnemar_p']:.3g}",
            ]
        )
    return (head, rows, by_passage) if rows else None


def _paired_counts(found: dict) -> str:
    """The "questions (passages)" cell: the passages counted only as far as they are known."""
    questions, unknown = found["questions"], found["unknown_passages"]
    if not unknown:
        return f"{questions} ({found['passages']})"
    if unknown == questions:
        return f"{questions} (passages unknown)"
    return f"{questions} ({found['passages'] - unknown} passages; {unknown} questions' passages unknown)"


def reference_table() -> Table:
    head = ["system", "setting", "EM", "F1", "scorer", "source"]
    return head, [
        [r.system, r.setting, str(r.em), "—" if r.f1 is None else str(r.f1), r.scorer, r.source]
        for r in REFERENCE_SCORES
    ]


def example_table(run: RunSummary) -> Table:
    """The run's example predictions; a question-generation run's columns say what its rows hold (the answer it
    was given, the question it generated, the human question)."""
    if run.task == "question":
        head = ["", "id", "answer given", "generated question", "human question", "F1"]
    else:
        head = ["", "id", "question", "prediction", "gold answers", "F1"]
    rows = [
        [
            "right" if _is_right(r) else "wrong",
            str(r.get("id", "")),
            str(r.get("question", "")),
            str(r.get("prediction", "")) or "(no answer: abstained)",
            (" / ".join(map(str, golds)) or "(none: no answer in the passage)")
            if isinstance(golds := r.get("golds"), list)
            else str(golds or ""),
            number_cell(r.get("f1")),
        ]
        for r in run.examples
    ]
    return head, rows


def _sources(metrics: dict) -> list[dict]:
    sources = metrics.get("train_sources")
    return [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else []


def sources_table(metrics: dict) -> Table | None:
    """metrics.json's "train_sources" (data.train's sources, a mix lists several) as a table: each source's
    questions in the training set, of those read, and its limit, weight and the count after them where any source
    sets one; None where the run has no such key (runs written before mixes) or one source only."""
    sources = _sources(metrics)
    if len(sources) < 2:
        return None
    shaped = any(s.get("limit") is not None or s.get("weight") is not None for s in sources)
    head = ["source", "questions in training", "read"] + (
        ["limit", "weight", "after limit and weight"] if shaped else []
    )
    rows = []
    for s in sources:
        row = [str(s.get("source", "?")), _count(s.get("questions")), _count(s.get("read"))]
        if shaped:
            row += [_count(s.get("limit")), number_cell(s.get("weight"), "g"), _count(s.get("mixed"))]
        rows.append(row)
    return head, rows


def sources_line(metrics: dict, v: Callable[[Any], str]) -> str | None:
    """One training source's count as a line (values through `v`); None where the run has none or several."""
    sources = _sources(metrics)
    if len(sources) != 1:
        return None
    (s,) = sources
    shaped = [f"{k} {v(s[k])}" for k in ("limit", "weight") if s.get(k) is not None]
    return (
        f"Training questions: {_count(s.get('questions'))} of the {_count(s.get('read'))} read from "
        f"{v(s.get('source', '?'))}" + (f" ({', '.join(shaped)})" if shaped else "") + "."
    )
