"""Tests for the report: fake run directories in, Markdown/HTML/PNG files out."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jsquad_lora.errors import InputError
from jsquad_lora.recipe import rundir
from jsquad_lora.report import charts
from jsquad_lora.report.charts import plot_loss, plot_scores
from jsquad_lora.report.references import REFERENCE_SCORES
from jsquad_lora.report.render import REPORT_MARKER, RUN_MARKER, render_html, render_markdown, write_report
from jsquad_lora.report.summary import ReportInputError, distinct_names, load_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _scores(em: float, f1: float) -> dict:
    return {
        s: {"exact_match": em + i, "f1": f1 + i, "count": 4442} for i, s in enumerate(("jglue", "stability", "llmjp"))
    }


def make_run(root: Path, name: str, *, full: bool = True) -> Path:
    """A run directory; `full=False` is an evaluate-only run with metrics.json alone."""
    run = root / name
    run.mkdir(parents=True)
    metrics: dict = {"model": "tiny", "recipe": name, "finished": True}
    if full:
        metrics |= {
            "before": _scores(3.25, 10.5),
            "after": _scores(41.75, 55.125),
            "train": {
                "seconds": 123.4,
                "tokens_per_second": 45678.9,
                "padding_fraction": 0.1,
                "steps": 20,
                "final_loss": 1.2,
            },
            "eval": {"seconds": 67.8, "questions": 4442},
            "eval_before": {"seconds": 60.0, "questions": 4442},
        }
        (run / "loss.jsonl").write_text(
            "".join(
                json.dumps({"step": s, "epoch": s / 10, "loss": 5.0 / s, "learning_rate": 1e-4}) + "\n"
                for s in range(1, 11)
            )
            + '{"step": 11, "lo',
            encoding="utf-8",
        )  # torn tail is skipped
        (run / "side_check.json").write_text(
            json.dumps(
                {
                    "prompt": "ユーザー: 自然言語処理について教えて下さい。<NL>システム:",
                    "before": "ああああ",
                    "after": "自然言語処理とは<b>",
                },
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )
        rows = [
            {
                "id": f"q{i}",
                "question": f"質問{i}",
                "prediction": "<script>x</script>" if i == 0 else f"答{i}",
                "golds": [f"答{i}"],
                "em": float(i % 2),
                "f1": float(i % 2),
            }
            for i in range(14)
        ]
        (run / "predictions-after.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    else:
        metrics["before"] = _scores(7.5, 12.0)
        metrics["eval_before"] = {"seconds": 5.0, "questions": 100}
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (run / "config.yaml").write_text(f"name: {name}\nmodel:\n  name: tiny\n", encoding="utf-8")
    return run


def test_write_report_full_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, "tiny-cpu")
    out = tmp_path / "out"
    written = write_report([run], out)
    assert [p.name for p in written] == ["report.md", "report.html", "scores.png", "loss.png"]
    assert all(p.is_file() and p.parent == out for p in written)
    for name in ("scores.png", "loss.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files behind

    md = (out / "report.md").read_text(encoding="utf-8")
    for ref in REFERENCE_SCORES:
        assert ref.system in md and ref.source in md
    for number in ("3.25", "10.50", "41.75", "55.12", "42.75", "123.4", "45,679", "67.8", "60.0"):
        assert number in md, number
    assert "NOT comparable" in md and "tiny-cpu" in md
    assert "](scores.png)" in md and "](loss.png)" in md
    assert "&lt;script&gt;" in md and "<script>" not in md

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2
    assert 'src="http' not in page and "href=" not in page and "<link" not in page and "<script src" not in page
    # the only scripts are the question browser's own (its code, and its rows as JSON): model output stays text
    assert page.count("<script") == 2 and page.count('<script type="application/json"') == 1
    assert "<script>x" not in page and "\\u003cscript\\u003ex\\u003c/script\\u003e" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "自然言語処理とは&lt;b&gt;" in page
    assert "&lt;NL&gt;" in page and "name: tiny-cpu" in page  # side-check prompt and embedded config
    assert "Tohoku BERT large" in page and "stability" in page


def test_examples_are_wrong_then_right(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "r"))
    assert run.examples_stage == "after"
    assert [r["id"] for r in run.examples] == ["q0", "q2", "q4", "q6", "q8", "q1", "q3", "q5", "q7", "q9"]
    assert run.loss[0] == (1, 5.0) and len(run.loss) == 10


def test_minimal_run_without_optional_files(tmp_path: Path) -> None:
    run = make_run(tmp_path, "eval-only", full=False)
    (run / "config.yaml").unlink()
    out = tmp_path / "out"
    written = write_report([run], out)
    assert [p.name for p in written] == ["report.md", "report.html", "scores.png"]
    assert not (out / "loss.png").exists()
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "7.50" in md and "loss.png" not in md
    summary = load_run(run)
    assert summary.side_check is None and summary.examples == [] and summary.loss == []


def test_two_runs_and_plots(tmp_path: Path) -> None:
    runs = [load_run(make_run(tmp_path, "a")), load_run(make_run(tmp_path, "b", full=False))]
    assert plot_scores(runs, tmp_path / "s.png").read_bytes().startswith(PNG_SIGNATURE)
    assert plot_loss(runs, tmp_path / "l.png").read_bytes().startswith(PNG_SIGNATURE)
    assert plot_loss(runs[1:], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    md = render_markdown(runs)
    assert "| a |" in md and "| b |" in md
    assert "data:image/png;base64," not in render_html(runs, {})


def test_reference_table_is_the_published_one() -> None:
    assert len(REFERENCE_SCORES) == 11
    assert REFERENCE_SCORES[1].em == 91.8 and REFERENCE_SCORES[1].scorer == "jglue"
    assert REFERENCE_SCORES[6].f1 == 79.26 and REFERENCE_SCORES[6].scorer == "stability"
    assert REFERENCE_SCORES[-1].em == 64.7 and REFERENCE_SCORES[-1].f1 is None
    with pytest.raises(AttributeError):
        REFERENCE_SCORES[0].em = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_bad_metrics_names_the_file(tmp_path: Path, content: str | None) -> None:
    run = tmp_path / "broken"
    run.mkdir()
    if content is not None:
        (run / "metrics.json").write_text(content, encoding="utf-8")
    with pytest.raises(ReportInputError) as info:
        write_report([run], tmp_path / "out")
    assert str(run / "metrics.json") in str(info.value)
    assert "fix:" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InputError)
    assert not (tmp_path / "out").exists()


# --- the output folder: the report writes only where it may (new, empty, its own, or a run directory) ---------


def _tree(root: Path) -> dict[str, tuple]:
    """Everything under `root`, hidden entries and `root` itself included: kind, content, mode and mtime.
    A file created (even a temporary one, removed again) changes its folder's mtime."""
    snapshot = {}
    for folder, dirs, files in os.walk(root):
        for path in [Path(folder)] + [Path(folder, n) for n in dirs + files]:
            info = path.lstat()
            content = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
            snapshot[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), content, info.st_mode, info.st_mtime_ns)
    return snapshot


def _user_folder(root: Path) -> Path:
    docs = root / "docs"
    docs.mkdir()
    (docs / "report.md").write_text("my own notes", encoding="utf-8")
    (docs / "scores.png").write_bytes(b"my own picture")
    return docs


@pytest.mark.parametrize("case", ["user-folder", "hidden-file-only", "symlink", "file", "dangling", "unmarked-run"])
def test_output_folder_not_ours_is_refused_untouched(tmp_path: Path, case: str) -> None:
    run = make_run(tmp_path, "r")
    docs = _user_folder(tmp_path)
    out = {"user-folder": docs, "unmarked-run": run}.get(case, tmp_path / "out")
    if case == "hidden-file-only":
        out.mkdir()
        (out / ".notes").write_text("x", encoding="utf-8")
    elif case == "symlink":
        out.symlink_to(docs)
    elif case == "file":
        out.write_text("a file", encoding="utf-8")
    elif case == "dangling":
        out.symlink_to(tmp_path / "nowhere")
    before = _tree(tmp_path)
    with pytest.raises(InputError) as info:
        write_report([run], out)
    assert str(out) in str(info.value) and "fix:" in str(info.value)
    assert _tree(tmp_path) == before  # nothing created, changed or removed anywhere


def test_output_folder_new_empty_or_ours(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r")
    out = tmp_path / "new" / "report"
    write_report([run], out)
    assert (out / REPORT_MARKER).is_file()
    (out / "mine.txt").write_text("kept", encoding="utf-8")
    write_report([run], out)  # our own report folder: written again, nothing else in it touched
    assert (out / "mine.txt").read_text(encoding="utf-8") == "kept"

    empty = tmp_path / "empty"
    empty.mkdir()
    link = tmp_path / "link"
    link.symlink_to(empty)
    write_report([run], link)  # a symbolic link to an empty folder: the report goes into the folder
    assert (empty / REPORT_MARKER).is_file() and (empty / "report.md").is_file()


def test_report_into_its_run_directory(tmp_path: Path) -> None:
    """As a run's finish() writes it: into the run directory itself, which holds the run marker."""
    assert RUN_MARKER == rundir.MARKER
    run = make_run(tmp_path, "r")
    (run / RUN_MARKER).write_text("", encoding="utf-8")
    written = write_report([run], run)
    assert [p.parent for p in written] == [run] * 4 and not (run / REPORT_MARKER).exists()
    before, other = {f.name: f.read_bytes() for f in run.iterdir()}, make_run(tmp_path, "other")
    with pytest.raises(InputError, match="not in this report"):  # another run's report would replace its own
        write_report([other], run)
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before
    write_report([other, run], run)  # a comparison that includes the run: allowed


# --- report.md: nothing from a run (names, paths, metrics, model output) becomes live Markdown or HTML ----------

HOSTILE = (
    "<img src=x onerror=alert(1)> [x](javascript:alert(1)) ![i](http://t/i.png) <http://t> <b>b</b> &lt;i&gt; "
    "*em* _u_ **s** `c` ``d`` ~~del~~ a|b \\*e\\* \\ #\n# heading\n\n<script>alert(2)</script>\n"
    "    code\n> quote\n- item"
)
HOSTILE_NAME = "<img src=x onerror=alert(1)>[x](javascript:alert(1))*e*_u_`c`|#~~d~~\n- item"  # no "/"
ALLOWED_TAGS = {"h1", "h2", "h3", "p", "strong", "table", "thead", "tbody", "tr", "th", "td", "img", "pre"}
ALLOWED_TAGS |= {"details", "summary", "code"}  # the resolved config, folded; `tiny` in the note


def _hostile_run(root: Path, name: str, model: str, *, sample: bool) -> Path:
    run = make_run(root, name)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    metrics |= {"model": model, "recipe": HOSTILE, "decoding": HOSTILE}
    metrics["base_model"] = {k: HOSTILE for k in ("name", "architecture", "source", "license")}
    if sample:
        metrics["sample"] = {k: HOSTILE for k in ("questions", "of", "seed", "ids")}
        metrics["sample"]["em_standard_error"] = {HOSTILE: 1.5}
    else:
        metrics["after"]["jglue"]["count"] = HOSTILE
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (run / "side_check.json").write_text(json.dumps({s: HOSTILE for s in ("prompt", "before", "after")}))
    row = {"id": HOSTILE, "question": HOSTILE, "prediction": HOSTILE, "golds": [HOSTILE, HOSTILE], "em": 0, "f1": 0}
    (run / "predictions-after.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    (run / "config.yaml").write_text(f"name: x\n\n# {HOSTILE}\n\n[y](javascript:alert(3))\n", encoding="utf-8")
    return run


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _renderers() -> dict:
    found = {}
    with contextlib.suppress(ImportError):
        import markdown

        found["python-markdown"] = lambda text: markdown.markdown(text, extensions=["tables"])
    with contextlib.suppress(ImportError):
        from markdown_it import MarkdownIt

        found["markdown-it (CommonMark, raw HTML on)"] = MarkdownIt("commonmark").enable("table").render
    return found


def test_markdown_report_keeps_run_values_as_text(tmp_path: Path) -> None:
    runs = [
        _hostile_run(tmp_path / "one", HOSTILE_NAME, HOSTILE, sample=True),
        _hostile_run(tmp_path / "two", "[t](javascript:alert(1))", "tiny", sample=False),  # tiny: named in a note
    ]
    md = (write_report(runs, tmp_path / "out")[0]).read_text(encoding="utf-8")
    assert "<img" not in md and "<script" not in md and "<b>" not in md
    assert "Tiny offline runs in this report: \\[t\\](javascript:alert(1))." in md
    renderers = _renderers()
    assert renderers, "no Markdown renderer installed (markdown, markdown-it-py)"
    for name, render in renderers.items():
        parsed = _Tags()
        parsed.feed(render(md))
        tags = {tag for tag, _ in parsed.tags}
        assert tags <= ALLOWED_TAGS, (name, tags - ALLOWED_TAGS)
        assert [a["src"] for t, a in parsed.tags if t == "img"] == ["scores.png", "loss.png"], name
        assert all(
            not k.startswith("on") and "javascript" not in (v or "") for _, a in parsed.tags for k, v in a.items()
        )
        if name.startswith("markdown-it"):  # CommonMark: every backslash escape is undone, so the text is exact
            text = "".join(parsed.text)
            flat = " ".join(HOSTILE.splitlines())
            assert text.count(flat) >= 8 and HOSTILE in text, name  # in cells and prose, and whole in <pre>
            assert " ".join(HOSTILE_NAME.splitlines()) in text


# --- runs whose directories share a name ---------------------------------------------------------------------


def test_runs_with_one_name_are_told_apart(tmp_path: Path, monkeypatch) -> None:
    dirs = [make_run(tmp_path / "a", "run"), make_run(tmp_path / "b", "run"), make_run(tmp_path / "x" / "a", "run")]
    dirs.append(make_run(tmp_path, "solo", full=False))
    names = [f"{tmp_path.name}/a/run", "b/run", "x/a/run", "solo"]
    runs = [load_run(d) for d in dirs]
    assert [r.name for r in distinct_names(runs)] == names
    assert [r.name for r in distinct_names(distinct_names(runs))] == names

    out = tmp_path / "out"
    write_report(dirs, out)
    md = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    for name in names:
        escaped = name.replace("_", "\\_")  # the test's folder name, as Markdown text
        assert f"| {escaped} |" in md and f"## Run {escaped}\n" in md
        assert f"<td>{name}</td>" in page and f"<h2>Run {name}</h2>" in page
    for name in names[:3]:  # each run's question browser says whose questions it holds
        assert f"<h3>Every question of {name}: " in page

    figures = []
    monkeypatch.setattr(charts, "_png", lambda fig: figures.append(fig) or b"")
    charts.scores_png(runs)
    charts.loss_png(runs)
    bars = {t.get_text() for t in figures[0].axes[0].get_yticklabels()}
    assert {f"{n} (tiny) after" for n in names[:3]} <= bars and "solo (tiny) before" in bars
    assert [t.get_text() for t in figures[1].axes[0].get_legend().get_texts()] == names[:3]


def test_chart_labels_of_non_ascii_names_differ(tmp_path: Path, monkeypatch) -> None:
    figures = []
    monkeypatch.setattr(charts, "_png", lambda fig: figures.append(fig) or b"")
    charts.loss_png([load_run(make_run(tmp_path, "実験")), load_run(make_run(tmp_path, "試験"))])
    first, second = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert first != second and first.isascii()


def test_one_run_directory_given_twice_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r")
    (tmp_path / "link").symlink_to(run)
    (tmp_path / "x").mkdir()
    for again in (tmp_path / "x" / ".." / "r", tmp_path / "link"):
        with pytest.raises(ReportInputError, match="given twice") as info:
            write_report([run, again], tmp_path / "out")
        assert str(again) in str(info.value) and "fix:" in str(info.value)
        assert not (tmp_path / "out").exists()
    with pytest.raises(ReportInputError, match="given twice"):
        render_markdown([load_run(run), load_run(run)])
