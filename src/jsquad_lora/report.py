"""Reports: our runs' scores beside the published JSQuAD reference scores, as Markdown and HTML.

Reading (`load_run`) and rendering (`render_markdown`, `render_html`, `scores_png`, `loss_png`)
are pure; only `plot_scores`, `plot_loss` and `write_report` touch the disk, and they write
every file atomically (temporary file beside it, then `os.replace`, via `files.write_bytes`).
report.html also holds every evaluated question of each run, browsable (`question_browser.py`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError
from .files import read_jsonl, write_bytes, write_text
from .jsonio import json_type_name, read_json_file, shown
from .question_browser import CSS as BROWSER_CSS
from .question_browser import browser_data, eval_questions, render_browser, script
from .scoring import PRIMARY_SCORER, SCORERS

log = logging.getLogger(__name__)

STAGES = ("before", "after")
EXAMPLES_PER_KIND = 5
TINY_MODEL = "tiny"  # modeling.TINY; not imported so reports never pull in torch


class ReportInputError(InputError, ValueError):
    """A run directory the report cannot read (missing or broken metrics.json, no runs)."""


@dataclass(frozen=True)
class ReferenceScore:
    """One published JSQuAD dev-set score (percent); `f1` is None where none was published."""

    system: str
    setting: str
    em: float
    f1: float | None
    source: str

    @property
    def scorer(self) -> str:
        """Which scorer produced the number, in our scorer names where one matches."""
        if self.source.startswith("JGLUE README"):
            return "jglue"
        if "jp-stable" in self.source:
            return "stability"
        return "unspecified"


REFERENCE_SCORES: tuple[ReferenceScore, ...] = (
    ReferenceScore("Human", "—", 87.1, 94.4, "JGLUE README (JGLUE scorer)"),
    ReferenceScore("Waseda RoBERTa large (s512)", "fine-tuned", 91.8, 96.3, "JGLUE README"),
    ReferenceScore("NICT BERT base", "fine-tuned", 89.7, 94.7, "JGLUE README"),
    ReferenceScore("Tohoku BERT large", "fine-tuned", 88.0, 94.6, "JGLUE README"),
    ReferenceScore("Tohoku BERT base", "fine-tuned", 87.1, 94.1, "JGLUE README"),
    ReferenceScore("ChatGPT (gpt-3.5-turbo)", "few-shot", 81.8, None, 'fintan.jp "ChatGPT vs BERT"'),
    ReferenceScore("japanese-stablelm-base-alpha-7b", "3-shot", 70.62, 79.26, "jp-stable harness results"),
    ReferenceScore("rinna 3.6b-instruction-ppo", "2-shot, prompt 0.4", 52.63, 64.39, "jp-stable harness results"),
    ReferenceScore("rinna 3.6b-instruction-ppo", "3-shot (v1.1)", 51.8, None, "as cited by the write-up"),
    ReferenceScore("rinna 3.6b-instruction-ppo", "zero-shot, seed prompt", 13.2, None, "the write-up"),
    ReferenceScore("rinna 3.6b-instruction-ppo", "LoRA, seed recipe", 64.7, None, "the write-up"),
)

NOT_COMPARABLE = (
    "Offline tiny-model runs (model `tiny`: a few-layer GPT-NeoX built from scratch with a character "
    "tokenizer) are NOT comparable with the reference models; they exist only to show that the "
    "pipeline learns (compare their before and after scores). Reference numbers are as published, "
    "with the scorer each source used; our numbers are ours, by generation on the dev set."
)


@dataclass
class RunSummary:
    """Everything the report needs from one run directory."""

    name: str
    path: Path
    metrics: dict[str, Any]
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    side_check: dict[str, str] | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)  # prediction rows, wrong ones first
    examples_stage: str | None = None  # "after", or "before" when the run has no after predictions
    config_text: str | None = None
    predictions: dict[str, list[dict]] = field(default_factory=dict)  # stage → prediction rows
    questions: dict[str, Any] = field(default_factory=dict)  # the evaluation split's questions by id (passages)
    questions_note: str | None = None  # why the passages are missing, when they are

    @property
    def is_tiny(self) -> bool:
        return self.metrics.get("model") == TINY_MODEL

    def score(self, stage: str, scorer: str, key: str) -> float | None:
        """metrics[stage][scorer][key] when it is a number, else None (stage not run)."""
        return _number(_dig(self.metrics, stage, scorer, key))


def _number(value: Any) -> float | None:
    """`value` as a finite float when it is a JSON number (not a boolean), else None: a run file's
    fields are only trusted as far as their types go."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _read_jsonl(path: Path) -> list[dict]:
    """Valid object lines of a JSONL file; a torn or foreign line is skipped, not fatal,
    because these files are optional extras of the report (a file that cannot be read at all is
    left out with a warning)."""
    if not path.is_file():
        return []
    try:
        rows = [row for _, row in read_jsonl(path, on_bad_line="skip")]
    except RecursionError:  # a line nested too deeply for json: skip that line as any other bad one
        rows = []
        for line in path.read_bytes().split(b"\n"):
            try:
                rows.append(json.loads(line.decode("utf-8-sig")))
            except (ValueError, RecursionError):
                continue
    except OSError as err:
        log.warning("%s: cannot be read (%s); left out of the report", path, err.strerror or err)
        return []
    return [row for row in rows if isinstance(row, dict)]


def _read_optional_object(path: Path, what: str) -> dict | None:
    """An optional JSON object file of a run, or None: absent, or broken or of another type (then left
    out of the report with a warning)."""
    if not path.exists():
        return None
    try:
        value = read_json_file(path, what)
    except InputError as err:
        where = f" ({err.where})" if err.where else ""
        log.warning("%s: %s%s; left out of the report", path, err.problem, where)
        return None
    if not isinstance(value, dict):
        log.warning("%s: not a JSON object (got %s); left out of the report", path, json_type_name(type(value)))
        return None
    return value


def _read_metrics(path: Path) -> dict:
    """metrics.json, the one file a run directory must have: a JSON object, or ReportInputError."""
    fix = "re-run `jsquad-lora evaluate` on this run directory to rewrite it"
    try:
        metrics = read_json_file(path, "metrics file")
    except InputError as err:
        raise ReportInputError(err.source, err.problem, where=err.where, fix=fix) from None
    if not isinstance(metrics, dict):
        raise ReportInputError(path, f"not a JSON object (got {json_type_name(type(metrics))})", fix=fix)
    return metrics


def _pick_examples(rows: list[dict], k: int = EXAMPLES_PER_KIND) -> list[dict]:
    wrong = [r for r in rows if not _is_right(r)][:k]
    right = [r for r in rows if _is_right(r)][:k]
    return wrong + right


def _is_right(row: dict) -> bool:
    em = _number(row.get("em"))
    return em is not None and em > 0


def load_run(run_dir: Path | str) -> RunSummary:
    """Read one run directory; only metrics.json is required, every other file is optional."""
    path = Path(run_dir)
    metrics_path = path / "metrics.json"
    fix = "pass a run directory written by `jsquad-lora run` (or `evaluate`), or finish that run first"
    if not metrics_path.is_file():
        raise ReportInputError(
            metrics_path, "missing: this is not a run directory, or the run never saved scores", fix=fix
        )
    metrics = _read_metrics(metrics_path)

    loss = [
        (int(step), value)
        for r in _read_jsonl(path / "loss.jsonl")
        if (step := _number(r.get("step"))) is not None and (value := _number(r.get("loss"))) is not None
    ]
    side = None
    if (raw := _read_optional_object(path / "side_check.json", "side-check file")) is not None:
        side = {k: str(v) for k, v in raw.items() if v is not None}
    predictions = {stage: rows for stage in STAGES if (rows := _read_jsonl(path / f"predictions-{stage}.jsonl"))}
    examples, stage = [], None
    for candidate in ("after", "before"):
        if candidate in predictions:
            examples, stage = _pick_examples(predictions[candidate]), candidate
            break
    questions, note = eval_questions(path) if predictions else ({}, None)
    config = path / "config.yaml"
    config_text = None
    if config.is_file():
        try:
            config_text = config.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            log.warning("%s: cannot be read (%s); left out of the report", config, err.strerror or err)
    return RunSummary(
        path.resolve().name,
        path,
        metrics,
        sorted(loss),
        side,
        examples,
        stage,
        config_text,
        predictions,
        questions,
        note,
    )


# ---- tables: one list of string rows each, rendered as Markdown or HTML ----


def _f(value: Any, spec: str = ".2f") -> str:
    """A number formatted, or "—" for anything else (absent, or of the wrong type in a run file)."""
    number = _number(value)
    return "—" if number is None else format(number, spec)


def _runs_table(runs: Sequence[RunSummary]) -> tuple[list[str], list[list[str]]]:
    head = ["run", "model", "recipe", "stage"]
    head += [f"{s} {k}" for s in SCORERS for k in ("EM", "F1")]
    head += ["questions", "train s", "tokens/s", "eval s"]
    rows = []
    for run in runs:
        for stage in STAGES:
            if not isinstance(run.metrics.get(stage), dict):
                continue
            row = [run.name, str(run.metrics.get("model", "?")), str(run.metrics.get("recipe", "?")), stage]
            row += [_f(run.score(stage, s, k)) for s in SCORERS for k in ("exact_match", "f1")]
            count = next((c for s in SCORERS if isinstance(c := _dig(run.metrics, stage, s, "count"), int)), None)
            row.append("—" if count is None else str(count))
            train = run.metrics.get("train") if stage == "after" else None
            row += [_f(_dig(train, "seconds"), ".1f"), _f(_dig(train, "tokens_per_second"), ",.0f")]
            row.append(_f(_dig(run.metrics, "eval" if stage == "after" else "eval_before", "seconds"), ".1f"))
            rows.append(row)
    return head, rows


def _reference_table() -> tuple[list[str], list[list[str]]]:
    head = ["system", "setting", "EM", "F1", "scorer", "source"]
    return head, [
        [r.system, r.setting, str(r.em), "—" if r.f1 is None else str(r.f1), r.scorer, r.source]
        for r in REFERENCE_SCORES
    ]


def _example_table(run: RunSummary) -> tuple[list[str], list[list[str]]]:
    head = ["", "id", "question", "prediction", "gold answers", "F1"]
    rows = [
        [
            "right" if _is_right(r) else "wrong",
            str(r.get("id", "")),
            str(r.get("question", "")),
            str(r.get("prediction", "")),
            " / ".join(map(str, golds)) if isinstance(golds := r.get("golds"), list) else str(golds or ""),
            _f(r.get("f1")),
        ]
        for r in run.examples
    ]
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    # Cells are HTML-escaped too: model output may hold markup, and Markdown renders raw HTML.
    def cell(text: str) -> str:
        return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, head)) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c, quote=False)}</td>" for c in r) + "</tr>\n" for r in rows)
    return f"<table>\n<tr>{th}</tr>\n{body}</table>"


def _sections(runs: Sequence[RunSummary], fmt: str, images: dict[str, str]) -> list[str]:
    """The report body shared by both formats; `images` maps chart name → URL (link or data URI)."""
    md = fmt == "md"
    table = _md_table if md else _html_table

    def h(level: int, text: str) -> str:
        return f"{'#' * level} {text}" if md else f"<h{level}>{html.escape(text)}</h{level}>"

    def p(text: str) -> str:
        return text if md else f"<p>{html.escape(text)}</p>"

    def pre(text: str) -> str:
        return f"<pre>{html.escape(text)}</pre>"

    def img(name: str, alt: str) -> str:
        return f"![{alt}]({images[name]})" if md else f'<img alt="{alt}" src="{images[name]}">'

    out = [h(1, "JSQuAD LoRA report"), p(("**Note.** " if md else "Note. ") + NOT_COMPARABLE)]
    if tiny := [r.name for r in runs if r.is_tiny]:
        out.append(p(f"Tiny offline runs in this report: {', '.join(tiny)}."))
    out += [h(2, "Our runs (JSQuAD dev, percent)"), table(*_runs_table(runs))]
    out += [
        h(2, "Published reference scores (JSQuAD dev)"),
        p(
            "The scorer column says which scorer made each number: jglue = JGLUE's SQuAD scorer, "
            "stability = the jp-stable (lm-evaluation-harness) scorer, unspecified = the source's own."
        ),
        table(*_reference_table()),
    ]
    if "scores.png" in images:
        out += [h(2, "Exact Match chart"), img("scores.png", "EM: our runs (jglue scorer) beside the references")]
    if "loss.png" in images:
        out += [h(2, "Training loss"), img("loss.png", "training loss")]
    for number, run in enumerate(runs):
        out.append(h(2, f"Run {run.name}"))
        out.append(p(f"Directory: {run.path}"))
        if isinstance(card := run.metrics.get("base_model"), dict) and card:
            out.append(
                p(
                    f"Base model: {card.get('name')} ({card.get('architecture', '?')}, "
                    f"{(_number(card.get('parameters')) or 0) / 1e6:,.1f}M parameters); "
                    f"source: {card.get('source', '?')}; license: {card.get('license', '?')}."
                )
            )
        out.append(p(_evaluated_questions(run.metrics)))
        if run.side_check:
            out.append(h(3, "Side check: free generation"))
            out += [p("Prompt:"), pre(run.side_check.get("prompt", ""))]
            for stage in STAGES:
                if stage in run.side_check:
                    out += [p(f"{stage.capitalize()} tuning:"), pre(run.side_check[stage])]
        if run.examples:
            out += [
                h(3, f"Example predictions ({run.examples_stage} tuning; first wrong, then right)"),
                table(*_example_table(run)),
            ]
        if run.predictions and not md:
            out += [
                h(3, "Every question: filter, search, open one to see its passage"),
                render_browser(browser_data(run.predictions, run.questions), str(number), run.questions_note),
            ]
        if run.config_text is not None:
            out.append(h(3, f"Resolved config ({run.path / 'config.yaml'})"))
            out.append(f"<details><summary>config.yaml</summary>{pre(run.config_text)}</details>")
    return out


def _evaluated_questions(metrics: dict) -> str:
    """Which dev questions the scores are over: the whole split, or the sample with its standard error."""
    sample = metrics.get("sample")
    count = _dig(metrics, "after", PRIMARY_SCORER, "count") or _dig(metrics, "before", PRIMARY_SCORER, "count")
    if not isinstance(sample, dict):
        return f"Evaluated: all {count} questions of the evaluation split." if count else "Not evaluated."
    errors = sample.get("em_standard_error")
    errors = errors if isinstance(errors, dict) else {}
    spread = "; ".join(f"{tag} ±{value:.2f}" for tag, raw in errors.items() if (value := _number(raw)) is not None)
    return (
        f"Evaluated: a fixed random sample of {sample.get('questions')} of the {sample.get('of')} questions "
        f"(stratified by article, drawn as whole passages, seed {sample.get('seed')}; ids in {sample.get('ids')}). "
        f"Standard error of jglue EM (points): {spread or 'n/a'}. "
        "The whole split is one override away: data.eval_sample=null."
    )


def render_markdown(runs: Sequence[RunSummary]) -> str:
    """The report as Markdown, linking scores.png (and loss.png when any run logged loss) beside it."""
    images = {"scores.png": "scores.png"}
    if any(r.loss for r in runs):
        images["loss.png"] = "loss.png"
    return shown("\n\n".join(_sections(runs, "md", images)) + "\n")  # a lone surrogate from a run file: escaped


_CSS = (
    "body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}"
    "pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap}img{max-width:100%}"
)


def render_html(runs: Sequence[RunSummary], images: dict[str, bytes]) -> str:
    """A self-contained HTML report: `images` (chart name → PNG bytes) embedded as data URIs."""
    uris = {name: "data:image/png;base64," + base64.b64encode(data).decode("ascii") for name, data in images.items()}
    body = shown("\n".join(_sections(runs, "html", uris)))  # a lone surrogate from a run file: escaped
    if any(r.predictions for r in runs):
        body += f"\n<script>\n{script()}</script>"
    return (
        f'<!DOCTYPE html>\n<html lang="ja">\n<head><meta charset="utf-8"><title>JSQuAD LoRA report</title>'
        f"<style>{_CSS}{BROWSER_CSS}</style></head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# ---- charts: built on a bare Figure (no pyplot), so no global backend state is touched ----


def _ascii(text: str) -> str:
    # The default fonts lack CJK glyphs; ASCII labels render everywhere.
    return text.replace("—", "-").encode("ascii", "replace").decode("ascii")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def scores_png(runs: Sequence[RunSummary]) -> bytes:
    """Horizontal bars of EM, sorted: references grey, our runs (jglue scorer) coloured."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = {"reference": "#a0a0a0", "before": "#6baed6", "after": "#e6550d"}
    bars = [
        (r.em, _ascii(r.system if r.setting == "—" else f"{r.system} [{r.setting}]"), "reference")
        for r in REFERENCE_SCORES
    ]
    for run in runs:
        for stage in STAGES:
            if (em := run.score(stage, PRIMARY_SCORER, "exact_match")) is not None:
                bars.append((em, _ascii(f"{run.name} ({run.metrics.get('model', '?')}) {stage}"), stage))
    bars.sort(key=lambda b: b[0])
    fig = Figure(figsize=(9, 1.5 + 0.32 * len(bars)))
    ax = fig.add_subplot()
    ax.barh(range(len(bars)), [b[0] for b in bars], color=[colours[b[2]] for b in bars])
    ax.set_yticks(range(len(bars)), [b[1] for b in bars], fontsize=8)
    for i, (em, _, _) in enumerate(bars):
        ax.text(em + 0.5, i, f"{em:.1f}", va="center", fontsize=7)
    ax.set_xlim(0, 105)
    ax.set_xlabel("Exact Match (%)")
    ax.set_title("JSQuAD dev EM: ours (jglue scorer) vs published references (scorer as published)", fontsize=9)
    ax.legend(
        handles=[
            Patch(color=c, label=f"ours, {k} tuning" if k != "reference" else "published reference")
            for k, c in colours.items()
        ],
        fontsize=7,
        loc="lower right",
    )
    return _png(fig)


def loss_png(runs: Sequence[RunSummary]) -> bytes | None:
    """Training loss against step, one line per run; None when no run logged any loss."""
    from matplotlib.figure import Figure

    if not any(r.loss for r in runs):
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for run in runs:
        if run.loss:
            ax.plot([s for s, _ in run.loss], [v for _, v in run.loss], label=_ascii(run.name), linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_scores(runs: Sequence[RunSummary], path: Path | str) -> Path:
    """Write the EM bar chart PNG to `path` (atomically)."""
    return write_bytes(path, scores_png(runs))


def plot_loss(runs: Sequence[RunSummary], path: Path | str) -> Path | None:
    """Write the loss curve PNG to `path` (atomically); None and no file when no run logged loss."""
    data = loss_png(runs)
    return write_bytes(path, data) if data is not None else None


def write_report(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write report.md, report.html, scores.png and (if any loss was logged) loss.png; return their paths."""
    if not run_dirs:
        raise ReportInputError("report", "no run directories given", fix="pass one or more run directories")
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    images = {"scores.png": scores_png(runs)}
    if (loss := loss_png(runs)) is not None:
        images["loss.png"] = loss
    try:
        written = [
            write_text(out_dir / "report.md", render_markdown(runs)),
            write_text(out_dir / "report.html", render_html(runs, images)),
        ]
        written += [write_bytes(out_dir / name, data) for name, data in images.items()]
    except OSError as err:
        raise ReportInputError(
            out_dir,
            f"cannot write the report here ({err.strerror or err})",
            fix="pass --output a directory you can write to (not an existing file)",
        ) from None
    return written
