"""Tests for the report: fake run directories in, Markdown/HTML/PNG files out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jsquad_lora.errors import InputError
from jsquad_lora.report.charts import plot_loss, plot_scores
from jsquad_lora.report.references import REFERENCE_SCORES
from jsquad_lora.report.render import render_html, render_markdown, write_report
from jsquad_lora.report.summary import ReportInputError, load_run

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
