"""The corpus of malformed inputs in tests/bad_inputs: every command that reads a file answers
with one message naming the file, the record and the fix, exit code 2, and no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from jsquad_lora.cli import main

HERE = Path(__file__).parent / "bad_inputs"
GOOD_DATA = HERE / "good.json"
GOOD_PREDICTIONS = HERE / "pred_good.json"

# file → (a phrase of the problem, the record it must name)
DATA = {
    "data_invalid_json.json": ("invalid JSON", "line 1, column"),
    "data_empty.json": ("empty", ""),
    "data_top_level_list.json": ("top level must be a JSON object", ""),
    "data_missing_data.json": ('"data" must be a list, got missing', "data"),
    "data_missing_paragraphs.json": ('"paragraphs" must be a list, got missing', "data[0].paragraphs"),
    "data_missing_context.json": ('"context" must be a string, got missing', "data[0].paragraphs[0].context"),
    "data_missing_qas.json": ('"qas" must be a list, got missing', "data[0].paragraphs[0].qas"),
    "data_missing_question.json": ('"question" must be a string, got missing', "(id a1p0q0).question"),
    "data_missing_id.json": ('"id" must be a string, got missing', "qas[0].id"),
    "data_missing_answers.json": ('"answers" must be a list, got missing', "(id a1p0q0).answers"),
    "data_context_not_string.json": ('"context" must be a string, got a list', "paragraphs[0].context"),
    "data_answer_start_string.json": ('"answer_start" must be an integer, got a string', "answers[0].answer_start"),
    "data_empty_answer_text.json": ("empty answer text", "answers[0].text"),
    "data_answer_start_out_of_range.json": ("answer_start 999 is outside the context", "answers[0].answer_start"),
    "data_duplicate_ids.json": ("duplicate question id 'a1p0q0'", "qas[1]"),
    "data_non_utf8.json": ("not UTF-8", "offset"),
    "data_impossible_with_answers.json": ('"is_impossible" is true but the question has 1', "(id a1p0q0).answers"),
    "data_no_questions.json": ("holds no questions", ""),
    "data_id_not_string.json": ('"id" must be a string, got an integer', "qas[0].id"),
    "data_duplicate_key.json": ("duplicate key 'answer_start'", "line 17, column 10"),
    "data_lone_surrogate_answer.json": ("lone surrogate \\ud800", "(id a1p0q0).answers[0].text"),
    "data_lone_surrogate_context.json": ("lone surrogate \\udc9f", "paragraphs[0].context"),
    "data_lone_surrogate_id.json": ("lone surrogate \\udfff", "qas[0].id"),
    "data_lone_surrogate_question.json": ("lone surrogate \\ud83d", "(id a1p0q0).question"),
    "data_lone_surrogate_title.json": ("lone surrogate \\udbff", "data[0].title"),
    "data_deeply_nested.json": ("nested too deeply", ""),
}
PREDICTIONS = {
    "pred_unknown_ids.json": ("not questions of the data file: zz9", "id zz9"),
    "pred_non_string.json": ("must be a string, got null", "id a1p0q0"),
    "pred_list_of_numbers.json": ('"id" (string) and "prediction"', "item 0"),
    "pred_torn_line.jsonl": ("invalid JSON on this line", "line 2"),
    "pred_wrong_top_level.json": ("got a string", ""),
    "pred_duplicate_key.json": ("duplicate key 'a1p0q0'", "line 3, column 3"),
    "pred_duplicate_key.jsonl": ("duplicate key 'prediction'", "line 1, column 40"),
    "pred_deeply_nested.json": ("nested too deeply", ""),
    "pred_deeply_nested.jsonl": ("nested too deeply", "line 2"),
    "pred_lone_surrogate.json": ("lone surrogate \\ud800", "id a1p0q0"),
    "pred_lone_surrogate.jsonl": ("lone surrogate \\udc00", "id a1p0q0"),
    "pred_pretty_syntax_error.json": ("invalid JSON: Expecting ',' delimiter", "line 3, column 3"),
}
CONFIGS = {
    "config_unknown_key.yaml": ("unknown key", "train.epochz"),
    "config_wrong_type.yaml": ("expected float, got str 'three'", "train.epochs"),
    "config_bad_yaml.yaml": ("invalid YAML", "line"),
    "config_bad_choice.yaml": ("'sometimes' is not allowed", "train.scheduler"),
    "config_not_mapping.yaml": ("must be a mapping", ""),
    "config_duplicate_key.yaml": ("duplicate key 'epochs' (first on line 3)", "line 5, column 3"),
    "config_deeply_nested.yaml": ("nested too deeply", ""),
    "config_nan.yaml": ("must be a finite number, got nan", "train.learning_rate"),
    "config_inf.yaml": ("must be a finite number, got inf", "train.epochs"),
    "config_overflow.yaml": ("must be a finite number, got inf", "train.learning_rate"),
}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def check(code, err, path, problem, where):
    assert code == 2
    assert "Traceback" not in err
    assert str(path) in err and problem in err and where in err and "fix:" in err
    assert err.count("error:") == 1


@pytest.fixture(scope="module", autouse=True)
def good_predictions():
    GOOD_PREDICTIONS.write_text('{"a1p0q0": "東アジア"}', encoding="utf-8")
    yield
    GOOD_PREDICTIONS.unlink()


def test_corpus_has_at_least_twenty_malformed_inputs():
    assert len(DATA) + len(PREDICTIONS) + len(CONFIGS) >= 20
    assert {p.name for p in HERE.iterdir()} >= set(DATA) | set(PREDICTIONS) | set(CONFIGS)


@pytest.mark.parametrize("name", sorted(DATA))
def test_bad_data_files(capsys, tmp_path, name):
    path, (problem, where) = HERE / name, DATA[name]
    for argv in (
        ["score", path, GOOD_PREDICTIONS],
        ["prompt", path, "--id", "a1p0q0"],
        ["stats", path],
        ["run", "--output", tmp_path / "run", f"data.dir={path}"],
    ):
        check(*run_cli(capsys, *argv), path, problem, where)


@pytest.mark.parametrize("name", sorted(PREDICTIONS))
def test_bad_prediction_files(capsys, name):
    path, (problem, where) = HERE / name, PREDICTIONS[name]
    check(*run_cli(capsys, "score", GOOD_DATA, path), path, problem, where)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bad_config_files(capsys, tmp_path, name):
    path, (problem, where) = HERE / name, CONFIGS[name]
    for command in ("run", "train", "evaluate"):
        check(*run_cli(capsys, command, "--config", path, "--output", tmp_path / "run"), path, problem, where)


def test_bad_override_names_the_key(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--output", tmp_path / "run", "train.epochs=-1")
    assert code == 2 and "train.epochs" in err and "fix:" in err


def test_good_files_score(capsys):
    assert main(["score", str(GOOD_DATA), str(GOOD_PREDICTIONS)]) == 0
    assert capsys.readouterr().out.strip() == '{"exact_match": 100.0, "f1": 100.0, "count": 1}'


def test_process_exit_code_and_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "jsquad_lora.cli", "score", str(HERE / "data_non_utf8.json"), str(GOOD_PREDICTIONS)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr and "not UTF-8" in result.stderr


def test_vllm_backend_where_it_cannot_run_is_a_clear_error(capsys, tmp_path):
    """No vLLM or no CUDA here: refused at start with the fix, before any model is built."""
    code, err = run_cli(capsys, "run", "--output", tmp_path / "run", "eval.backend=vllm", f"data.dir={GOOD_DATA}")
    assert code == 2 and "eval.backend=vllm" in err and "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "base").exists()
    code, err = run_cli(
        capsys,
        "run",
        "--output",
        tmp_path / "run2",
        "eval.backend=vllm",
        "eval.decoding=extractive",
        f"data.dir={GOOD_DATA}",
    )
    assert code == 2 and "extractive decoding is only implemented on the HF backend" in err


def test_context_longer_than_the_window_is_read_in_windows_and_counted(tmp_path, caplog):
    """A valid file whose passage is far longer than model.max_length: training and evaluation read it in
    windows, and both counts reach metrics.json and the log."""
    import json
    import logging

    from conftest import TINY_TEST

    path = HERE / "data_long_context.json"
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert (
            main(
                [
                    "run",
                    "--output",
                    str(run),
                    *TINY_TEST,
                    "model.max_length=256",
                    f"data.dir={path}",
                    "eval.side_check=false",
                    "train.synthetic_per_passage=0",
                ]
            )
            == 0
        )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["windowed_questions"] == 1 and metrics["eval"]["windowed_questions"] == 1
    assert "1 of 1 training questions exceed model.max_length=256" in caplog.text
    assert "1 evaluation passages were too long for one prompt: read in windows" in caplog.text
    assert metrics["eval"]["questions"] == 1
    (row,) = [json.loads(line) for line in (run / "predictions-after.jsonl").read_text().splitlines()]
    assert row["windows"] > 1 and len(row["window_answers"]) == row["windows"]
