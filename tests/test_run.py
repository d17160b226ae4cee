"""The main job end to end on a tiny model and a slice of the data: artefacts, metrics, re-scoring."""

import json

import pytest
from conftest import TINY_TEST, needs_data

from jsquad_lora.cli import main
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.evaluate.predictions import load_predictions
from jsquad_lora.evaluate.scorers import score_predictions


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert main(["run", "--output", str(out), *TINY_TEST]) == 0
    return out


@needs_data()
def test_run_writes_every_artefact(run_dir):
    for name in (
        "config.yaml",
        "metrics.json",
        "predictions-before.jsonl",
        "predictions-after.jsonl",
        "loss.jsonl",
        "side_check.json",
        "report.md",
        "report.html",
        "scores.png",
        "adapter/model.safetensors",
        "base/model.safetensors",
    ):
        assert (run_dir / name).exists(), name
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob("*.partial.jsonl"))
    assert not list((run_dir / "adapter").glob("*.bin"))


@needs_data()
def test_metrics_shape_and_rescoring(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for tag in ("before", "after"):
        assert set(metrics[tag]) == {"jglue", "stability", "llmjp"}
        assert set(metrics[tag]["jglue"]) == {"exact_match", "f1", "count"}
    assert set(metrics["train"]) >= {"seconds", "tokens_per_second", "padding_fraction"}
    assert set(metrics["eval"]) >= {"seconds", "questions"} and metrics["eval"]["questions"] == 24
    questions = load_split(resolve_split(None, "valid")).questions[:24]
    predictions = load_predictions(run_dir / "predictions-after.jsonl", questions)
    assert len(predictions) == 24
    for metric in ("jglue", "stability", "llmjp"):
        assert score_predictions(questions, predictions, metric).as_dict() == metrics["after"][metric]
    rows = [json.loads(line) for line in (run_dir / "predictions-after.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"id", "question", "prediction", "golds", "em", "f1", "passage"}


@needs_data()
def test_finished_run_is_not_overwritten(run_dir, capsys):
    before = (run_dir / "metrics.json").read_bytes()
    assert main(["run", "--output", str(run_dir), *TINY_TEST]) == 0  # nothing to do
    assert (run_dir / "metrics.json").read_bytes() == before
    assert main(["run", "--output", str(run_dir), *TINY_TEST, "train.epochs=2"]) == 2  # another config: refused
    assert "--overwrite deletes" in capsys.readouterr().err
    assert (run_dir / "metrics.json").read_bytes() == before


@needs_data()
def test_ask_answers_from_a_run(run_dir, capsys):
    assert (
        main(
            [
                "ask",
                "--run",
                str(run_dir),
                "--context",
                "梅雨は東アジアの気象現象である。",
                "--question",
                "梅雨はどこの現象か。",
                "--decoding",
                "extractive",
            ]
        )
        == 0
    )
    answer = capsys.readouterr().out.strip()
    assert answer in "梅雨は東アジアの気象現象である。"
    assert main(["ask", "--run", str(run_dir), "--context", "x" * 30_000, "--question", "?"]) == 2


@needs_data()
def test_side_check_in_the_runs_format_and_the_perplexity_tuning_cost(run_dir):
    import math

    from jsquad_lora.config.load import load_config
    from jsquad_lora.prompts.templates import side_check_prompt

    cfg = load_config(str(run_dir / "config.yaml"), [])
    side = json.loads((run_dir / "side_check.json").read_text())
    assert side["prompt"] == side_check_prompt(cfg.prompt.template) and {"before", "after"} <= set(side)
    modelling = json.loads((run_dir / "metrics.json").read_text())["language_modelling"]
    assert modelling["passages"] > 0 and modelling["tokens"] > 100
    for stage in ("before", "after"):
        assert math.isfinite(modelling[stage]) and modelling[stage] > 1.0
    assert "What tuning cost general language modelling" in (run_dir / "report.md").read_text()
