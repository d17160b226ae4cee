"""Reports: our runs' scores beside the published JSQuAD reference scores, as Markdown and HTML.

Reading (`load_run`) and rendering (`render_markdown`, `render_html`, `scores_png`, `loss_png`)
are pure; only `plot_scores`, `plot_loss` and `write_report` touch the disk, and they write
every file atomically (temporary file beside it, then `os.replace`, via `files.write_bytes`).
The tables' text comes from `tables.py`; report.html also holds every evaluated question of each run, browsable
(`question_browser.py`). Question-generation runs (task: question) have a table of their own, apart from the QA
runs, the references and the EM chart.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from jsquad_lora.evaluate.scorers import PRIMARY_SCORER
from jsquad_lora.report.charts import loss_png, scores_png
from jsquad_lora.report.question_browser import CSS as BROWSER_CSS
from jsquad_lora.report.question_browser import browser_data, render_browser, script
from jsquad_lora.report.references import NOT_COMPARABLE, SCORES_NOTE
from jsquad_lora.report.summary import (
    STAGES,
    ReportInputError,
    RunSummary,
    _dig,
    _number,
    distinct_names,
    load_run,
    windowed_questions,
)
from jsquad_lora.report.tables import (
    QUESTION_NOTE,
    answerability_table,
    example_table,
    number_cell,
    paired_table,
    qa_runs,
    question_table,
    reference_table,
    runs_table,
    sources_line,
    sources_table,
)
from jsquad_lora.util.files import holds_marker, write_bytes, write_text
from jsquad_lora.util.jsonio import shown

#: written first into an output folder the report makes (or finds empty): the one kind it writes into again
REPORT_MARKER = ".jsquad-lora-report"
#: recipe/rundir.py's MARKER: a run directory holds its own report (recipe is a layer above: not imported)
RUN_MARKER = ".jsquad-lora-run"
#: above a question-generation run's question browser: what its rows hold
QUESTION_ROWS = (
    "A question-generation run: each row's question is the answer the model was given (the highlighted gold "
    "answer in its passage), its prediction the question it generated, and gold the human question."
)
#: what can start Markdown markup inside a line (with "<" and "&", which are HTML-escaped)
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def _md_text(value: Any) -> str:
    """A value from a run (a name, a path, a metrics field, model output) as Markdown that shows it as it is:
    on one line, its Markdown punctuation backslash-escaped and its HTML escaped (Markdown renders raw HTML)."""
    return html.escape(_MD_SPECIAL.sub(r"\\\1", " ".join(str(value).splitlines())), quote=False)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_md_text, head)) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(_md_text, r)) + " |" for r in rows])


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c, quote=False)}</td>" for c in r) + "</tr>\n" for r in rows)
    return f"<table>\n<tr>{th}</tr>\n{body}</table>"


def _sections(runs: Sequence[RunSummary], fmt: str, images: dict[str, str]) -> list[str]:
    """The report body shared by both formats; `images` maps chart name → URL (link or data URI). Every value
    from a run goes in through `v` (escaped for Markdown; the HTML helpers escape whole texts)."""
    md = fmt == "md"
    table = _md_table if md else _html_table
    v = _md_text if md else str

    def h(level: int, text: str) -> str:
        return f"{'#' * level} {text}" if md else f"<h{level}>{html.escape(text)}</h{level}>"

    def p(text: str) -> str:
        return text if md else f"<p>{html.escape(text)}</p>"

    def pre(text: str) -> str:
        return f"<pre>{html.escape(text)}</pre>"

    def img(name: str, alt: str) -> str:
        return f"![{alt}]({images[name]})" if md else f'<img alt="{alt}" src="{images[name]}">'

    out = [h(1, "JSQuAD LoRA report")]
    if tiny := [v(r.name) for r in runs if r.is_tiny]:  # the note only where a tiny run is in the report
        out.append(p(("**Note.** " if md else "Note. ") + NOT_COMPARABLE))
        out.append(p(f"Tiny offline runs in this report: {', '.join(tiny)}."))
    out.append(p(SCORES_NOTE))
    if qa_runs(runs):
        out += [h(2, "Our runs (JSQuAD dev, percent)"), table(*runs_table(runs))]
    if generated := question_table(runs):
        out += [h(2, "Question generation (against the human questions, percent)"), p(QUESTION_NOTE)]
        out.append(table(*generated))
    if paired := paired_table(runs):
        head, rows, by_passage = paired
        resampled = (
            "resamples whole passages"
            if by_passage
            else "resamples whole passages where the passages are known (a row whose interval says they are "
            "unknown resamples single questions, so its interval is too narrow)"
        )
        out += [
            h(2, "Paired comparisons (the same questions)"),
            p(
                "ΔEM in points (jglue exact match) on the questions both evaluations answered, with a 95% bootstrap "
                f"interval that {resampled}, and McNemar's exact test on the questions right in only one."
            ),
            table(head, rows),
        ]
    if split := answerability_table(runs):
        out += [
            h(2, "Questions without an answer (SQuAD v2's split, jglue scorer, percent)"),
            p(
                "HasAns: the questions whose passage holds an answer. NoAns: those whose passage does not; "
                "right means the model abstained (answered nothing)."
            ),
            table(*split),
        ]
    out += [
        h(2, "Published reference scores (JSQuAD dev)"),
        p(
            "The scorer column says which scorer made each number: jglue = JGLUE's SQuAD scorer, "
            "stability = the jp-stable (lm-evaluation-harness) scorer, unspecified = the source's own."
        ),
        table(*reference_table()),
    ]
    if "scores.png" in images:
        out += [h(2, "Exact Match chart"), img("scores.png", "EM: our runs (jglue scorer) beside the references")]
    if "loss.png" in images:
        out += [h(2, "Training loss"), img("loss.png", "training loss")]
    for number, run in enumerate(runs):
        out.append(h(2, f"Run {v(run.name)}" + (" (question generation)" if run.task == "question" else "")))
        out.append(p(f"Directory: {v(run.path)}"))
        if isinstance(card := run.metrics.get("base_model"), dict) and card:
            out.append(
                p(
                    f"Base model: {v(card.get('name'))} ({v(card.get('architecture', '?'))}, "
                    f"{(_number(card.get('parameters')) or 0) / 1e6:,.1f}M parameters); "
                    f"source: {v(card.get('source', '?'))}; license: {v(card.get('license', '?'))}."
                )
            )
        out.append(p(_evaluated_questions(run.metrics, v)))
        untrained = "" if isinstance(run.metrics.get("train"), dict) else " Not trained yet: the set as configured."
        if line := sources_line(run.metrics, v):
            out.append(p(line + untrained))
        elif sources := sources_table(run.metrics):
            out += [h(3, "Training sources (data.train)"), table(*sources)] + ([p(untrained.strip())] * bool(untrained))
        if windowed := _windowed(run.metrics):
            out.append(p(windowed))
        if isinstance(modelling := run.metrics.get("language_modelling"), dict):
            out.append(
                p(
                    "What tuning cost general language modelling: perplexity per token on "
                    f"{v(modelling.get('passages'))} evaluation passages without their questions "
                    f"({v(modelling.get('tokens'))} tokens), before {number_cell(modelling.get('before'))} "
                    f"→ after {number_cell(modelling.get('after'))} (lower is better)."
                )
            )
        if run.side_check:
            out.append(h(3, "Side check: free generation"))
            out += [p("Prompt:"), pre(run.side_check.get("prompt", ""))]
            for stage in STAGES:
                if stage in run.side_check:
                    out += [p(f"{stage.capitalize()} tuning:"), pre(run.side_check[stage])]
        if run.examples:
            out += [
                h(3, f"Example predictions ({run.examples_stage} tuning; first wrong, then right)"),
                table(*example_table(run)),
            ]
        if run.predictions and not md:
            out.append(h(3, f"Every question of {run.name}: filter, search, open one to see its passage"))
            if run.task == "question":
                out.append(p(QUESTION_ROWS))
            out.append(render_browser(browser_data(run.predictions, run.questions), str(number), run.questions_note))
        if run.config_text is not None:
            out.append(h(3, f"Resolved config ({v(run.path / 'config.yaml')})"))
            # the <pre> on lines of its own: a Markdown HTML block that starts with <details> ends at a blank line
            out.append(f"<details><summary>config.yaml</summary>\n\n{pre(run.config_text)}\n\n</details>")
    return out


def _windowed(metrics: dict) -> str | None:
    """How many questions had a passage too long for one prompt, read in overlapping windows (nothing cut), per
    stage: metrics.json's "windowed_questions", or older runs' "truncated_prompts"; None where none had."""
    counts = [
        f"{what} {count}"
        for what, key in (
            ("training", "train"),
            ("evaluated before tuning", "eval_before"),
            ("evaluated after tuning", "eval"),
        )
        if (count := windowed_questions(metrics.get(key)))
    ]
    if not counts:
        return None
    return (
        "Questions whose passage was longer than one prompt and was read in overlapping windows (nothing is cut): "
        + ", ".join(counts)
        + "."
    )


def _evaluated_questions(metrics: dict, v: Callable[[Any], str]) -> str:
    """Which dev questions the scores are over: the whole split, or the sample with its standard error
    (the values read from metrics.json go through `v`)."""
    sample = metrics.get("sample")
    count = _dig(metrics, "after", PRIMARY_SCORER, "count") or _dig(metrics, "before", PRIMARY_SCORER, "count")
    if not isinstance(sample, dict):
        return f"Evaluated: all {v(count)} questions of the evaluation split." if count else "Not evaluated."
    errors = sample.get("em_standard_error")
    errors = errors if isinstance(errors, dict) else {}
    spread = "; ".join(f"{v(tag)} ±{value:.2f}" for tag, raw in errors.items() if (value := _number(raw)) is not None)
    return (
        f"Evaluated: a fixed random sample of {v(sample.get('questions'))} of the {v(sample.get('of'))} questions "
        f"(stratified by article, drawn as whole passages, seed {v(sample.get('seed'))}; "
        f"ids in {v(sample.get('ids'))}). "
        f"Standard error of jglue EM (points): {spread or 'n/a'}. "
        "The whole split is one override away: data.eval_sample=null."
    )


def render_markdown(runs: Sequence[RunSummary]) -> str:
    """The report as Markdown, linking scores.png (and loss.png when any run logged loss) beside it."""
    runs = distinct_names(runs)
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
    runs = distinct_names(runs)
    uris = {name: "data:image/png;base64," + base64.b64encode(data).decode("ascii") for name, data in images.items()}
    body = shown("\n".join(_sections(runs, "html", uris)))  # a lone surrogate from a run file: escaped
    if any(r.predictions for r in runs):
        body += f"\n<script>\n{script()}</script>"
    return (
        f'<!DOCTYPE html>\n<html lang="ja">\n<head><meta charset="utf-8"><title>JSQuAD LoRA report</title>'
        f"<style>{_CSS}{BROWSER_CSS}</style></head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_report(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write report.md, report.html, scores.png and (if any loss was logged) loss.png; return their paths.
    `out_dir` must be new, empty, a report folder (REPORT_MARKER) or a run directory (RUN_MARKER): anything
    else is refused before any file is read or written."""
    if not run_dirs:
        raise ReportInputError("report", "no run directories given", fix="pass one or more run directories")
    out_dir = Path(out_dir)
    try:
        mark = _needs_marker(out_dir, run_dirs)
    except OSError as err:
        raise _unwritable(out_dir, err) from None
    runs = distinct_names([load_run(d) for d in run_dirs])
    images = {"scores.png": scores_png(runs)}
    if (loss := loss_png(runs)) is not None:
        images["loss.png"] = loss
    try:
        if mark:
            write_text(out_dir / REPORT_MARKER, "a report folder of jsquad-lora: `jsquad-lora report` rewrites it\n")
        written = [
            write_text(out_dir / "report.md", render_markdown(runs)),
            write_text(out_dir / "report.html", render_html(runs, images)),
        ]
        written += [write_bytes(out_dir / name, data) for name, data in images.items()]
    except OSError as err:
        raise _unwritable(out_dir, err) from None
    return written


def _needs_marker(out_dir: Path, run_dirs: list[Path]) -> bool:
    """Whether `out_dir` is new or empty (the report marks it first); False for a report folder or one of
    the reported run directories. Anything else (a file, a dangling link, a folder of the user's, another
    run's directory, whose own report it would replace) is an error."""
    fix = "pass --output a new or empty directory"
    if out_dir.is_symlink() and not out_dir.exists():
        raise ReportInputError(out_dir, "cannot write the report here: a symbolic link to nothing", fix=fix)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportInputError(out_dir, "cannot write the report here: a file, not a directory", fix=fix)
    if (out_dir / RUN_MARKER).is_file():
        if out_dir.resolve() in {Path(d).resolve() for d in run_dirs}:
            return False
        raise ReportInputError(
            out_dir,
            "this is the directory of a run that is not in this report: its own report would be replaced",
            fix="pass --output a new or empty directory (or include this run in the report)",
        )
    fix += (
        f"; if it holds a report of an earlier version of this tool, create the marker: touch {out_dir / REPORT_MARKER}"
    )
    return not holds_marker(out_dir, REPORT_MARKER, what="a report folder of jsquad-lora", fix=fix)


def _unwritable(out_dir: Path, err: OSError) -> ReportInputError:
    return ReportInputError(
        out_dir,
        f"cannot write the report here ({err.strerror or err})",
        fix="pass --output a directory you can write to (not an existing file)",
    )
