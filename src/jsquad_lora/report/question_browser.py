"""The report's question browser: every evaluated question of a run, browsable in report.html.

A run's predictions before and after tuning are joined by question id, with each question's passage
and gold answer spans from the evaluation split its config.yaml names (`data.eval`, or `data.dir` and
`data.eval_split`; without it the rows have no passage, and the report says why). The rows go into the page as JSON;
`question_browser.js` (inline, no network) shows one page of them at a time (paged, so the 4,442 dev
questions stay fast) with filters (right, wrong, fixed / broken / changed by tuning), text search,
and a question's passage with the gold answers and each stage's prediction highlighted, before
beside after. Reading is `eval_questions`; `browser_data` and `render_browser` are pure.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from jsquad_lora.data.formats import read_split
from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError

STAGES = ("before", "after")
PAGE_SIZE = 25
CSS = (
    ".qb-bar{display:flex;flex-wrap:wrap;gap:.5em;align-items:center;margin:.5em 0}"
    ".qb-bar button[aria-pressed=true]{background:#333;color:#fff}"
    ".qb-bar input{flex:1;min-width:12em;padding:.3em}"
    ".qb-row{border-bottom:1px solid #ddd;padding:.3em 0}.qb-row summary{cursor:pointer}"
    ".qb-tag{display:inline-block;min-width:4.5em;font-size:.8em;padding:0 .3em;margin-right:.4em;border-radius:3px;"
    "text-align:center}.qb-tag.right,.qb-tag.fixed{background:#c8e6c9}.qb-tag.wrong,.qb-tag.broken{background:#ffcdd2}"
    ".qb-answers{color:#444;font-size:.9em;margin-left:5.5em}.qb-abstained{font-style:italic;color:#555}"
    ".qb-cols{display:flex;gap:1em;margin:.5em 0}.qb-col{flex:1;min-width:0}"
    ".qb-passage{white-space:pre-wrap;background:#f6f6f6;padding:.5em;line-height:1.6}"
    "mark.gold{background:#a5d6a7}mark.pred{background:#fff176}mark.gold.pred{background:#ffb74d}"
)


def eval_questions(run_dir: Path) -> tuple[dict[str, Question], str | None]:
    """The run's evaluation split by question id, from its config.yaml; or ({}, why not), never an error:
    the passages are an extra of the report. A `jglue:` source is read from the cache only (no download)."""
    import yaml

    config = Path(run_dir) / "config.yaml"
    fix = "keep the data where the run read it (or set JSQUAD_DIR) and run `jsquad-lora report` again"
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as err:
        return {}, f"{config} could not be read ({type(err).__name__})"
    data = raw.get("data") if isinstance(raw, dict) else None
    data = data if isinstance(data, dict) else {}
    source, split = data.get("dir"), data.get("eval_split", "valid")
    if data.get("eval") is not None:  # data.eval: a source of its own
        source, split = data.get("eval"), "valid"
    columns, encoding = data.get("columns"), data.get("encoding")
    if not isinstance(split, str) or not (source is None or isinstance(source, str)):
        return {}, f"{config}: data.dir / data.eval / data.eval_split are not text"
    if not (columns is None or isinstance(columns, dict)) or not (encoding is None or isinstance(encoding, str)):
        return {}, f"{config}: data.columns / data.encoding are not a mapping / text"
    try:
        questions = read_split(source, split, download=False, columns=columns, encoding=encoding).questions
    except InputError as err:
        return {}, f"the evaluation split could not be read ({err.source}: {err.problem}); {fix}"
    except OSError as err:
        return {}, f"the evaluation split could not be read ({err.strerror or err}); {fix}"
    return {q.id: q for q in questions}, None


def _utf16(text: str, index: int) -> int:
    """A code-point index of `text` as a JavaScript (UTF-16) string index."""
    return index + sum(1 for c in text[:index] if ord(c) > 0xFFFF)


def _gold_spans(q: Question) -> list[list[int]]:
    """[start, end) of each gold answer in the passage (UTF-16 indices, as the page's script slices):
    at its answer_start where the text is there, else its first occurrence; absent answers are left out."""
    spans = []
    for answer, start in zip(q.answers, q.answer_starts):
        if not answer:
            continue
        if q.context[start : start + len(answer)] != answer:
            start = q.context.find(answer)
        if start >= 0:
            spans.append([_utf16(q.context, start), _utf16(q.context, start + len(answer))])
    return spans


def _score(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return round(float(value), 2)


def browser_data(predictions: dict[str, list[dict]], questions: dict[str, Question]) -> dict:
    """The page's JSON: the stages present, the passages (each once), and one row per question id in
    file order: id, question `q`, golds `g`, gold spans `gs`, passage index `p` (-1: none), and per
    stage (`b` before, `a` after) the prediction, `be`/`ae` right (jglue EM > 0) and `bf`/`af` F1."""
    stages = [s for s in STAGES if predictions.get(s)]
    rows: dict[str, dict] = {}
    for stage in stages:
        key = stage[0]
        for r in predictions[stage]:
            qid = str(r.get("id", ""))
            golds = r.get("golds")
            row = rows.setdefault(
                qid,
                {
                    "id": qid,
                    "q": str(r.get("question", "")),
                    "g": [str(g) for g in golds] if isinstance(golds, list) else [],
                },
            )
            row[key] = str(r.get("prediction", ""))
            row[key + "e"] = (_score(r.get("em")) or 0) > 0
            row[key + "f"] = _score(r.get("f1"))
    passages: list[str] = []
    index: dict[str, int] = {}
    for row in rows.values():
        q = questions.get(row["id"])
        if q is None:
            row["p"] = -1
            continue
        if q.context not in index:
            index[q.context] = len(passages)
            passages.append(q.context)
        row["p"], row["gs"] = index[q.context], _gold_spans(q)
    return {"stages": stages, "passages": passages, "rows": list(rows.values()), "pageSize": PAGE_SIZE}


def _embedded_json(data: dict) -> str:
    """JSON safe inside <script type="application/json">: no "<" (so no "</script>" or "<!--"), ">" or "&"."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_browser(data: dict, key: str, note: str | None) -> str:
    """The browser of one run as an HTML fragment: a container the script fills, and its rows as JSON."""
    import html

    parts = []
    if note:
        parts.append(f"<p>Passages are not shown: {html.escape(note)}</p>")
    parts.append(
        f'<div class="qb" data-src="qb-data-{key}"><noscript>The question browser needs JavaScript.</noscript></div>'
    )
    parts.append(f'<script type="application/json" id="qb-data-{key}">{_embedded_json(data)}</script>')
    return "\n".join(parts)


def script() -> str:
    """The browser's JavaScript (inline in the page, once for all runs)."""
    return resources.files(__package__).joinpath("question_browser.js").read_text(encoding="utf-8")
