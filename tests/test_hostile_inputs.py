"""Hostile inputs beyond the corpus in tests/bad_inputs: inputs too large to store (100,000 nested
brackets, a million-character prediction), inputs that need a process of their own (bytes that are
not UTF-8 on the command line, a MeCab crash), and run or model directories with parts missing.
Each gives one InputError naming the file (or option), the place and the fix, or works: never a
traceback, a crash, or a silently wrong result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jsquad_lora.cli import main
from jsquad_lora.config.load import config_to_yaml, load_config
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.errors import InputError
from jsquad_lora.evaluate.predictions import load_predictions
from jsquad_lora.evaluate.scorers import MECAB_MAX_CHARS, _stability_tokens, mecab_chunks, score_predictions
from jsquad_lora.report.render import write_report
from jsquad_lora.report.summary import ReportInputError, load_run
from jsquad_lora.util.jsonio import parse_json_text

HERE = Path(__file__).parent / "bad_inputs"
GOOD_DATA = HERE / "good.json"
DEPTH = 100_000


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def check(code, err, *phrases):
    assert code == 2, err
    assert "Traceback" not in err and err.count("error:") == 1 and "fix:" in err, err
    for phrase in phrases:
        assert str(phrase) in err, (phrase, err)


@pytest.fixture
def good_predictions(tmp_path):
    path = tmp_path / "pred.json"
    path.write_text('{"a1p0q0": "東アジア"}', encoding="utf-8")
    return path


# --- 1. duplicate keys ------------------------------------------------------------------------


def test_duplicate_key_is_found_innermost_with_both_places():
    text = '{\n  "x": {"b": [1, {"c": 1,\n    "c": 2}]},\n  "x": 3\n}'
    with pytest.raises(InputError) as info:
        parse_json_text(text, "f.json")
    assert "duplicate key 'c'" in info.value.problem and "first at line 2, column 19" in info.value.problem
    assert info.value.where == "line 3, column 5"


def test_duplicate_key_written_with_an_escape_is_still_a_duplicate():
    with pytest.raises(InputError, match="duplicate key 'aa'"):
        parse_json_text('{"a\\u0061": 1, "aa": 2}', "f.json")


def test_same_key_in_different_objects_is_fine():
    assert parse_json_text('{"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}', "f.json")["c"][1] == {"a": 4}


def test_duplicate_key_in_a_yaml_override_value(capsys, tmp_path):
    check(
        *run_cli(capsys, "run", "--output", tmp_path / "run", "train={epochs: 1, epochs: 2}"),
        "override train={epochs: 1, epochs: 2}",
        "duplicate key 'epochs'",
    )


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    """`<<: *base` then a key of its own is YAML's way to override, not a duplicate."""
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  <<: {epochs: 1.0, batch_size: 2}\n  epochs: 3\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.train.epochs == 3.0 and cfg.train.batch_size == 2


def _alias_bomb(levels: int, width: int = 9) -> list[str]:
    """YAML lines whose last anchor stands for width ** levels values ("a billion laughs")."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return lines


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("\n".join(_alias_bomb(9)) + "\nlora:\n  target_modules: *l8\n", "expand to more than 10,000 values"),
        ("\n".join(_alias_bomb(9)) + "\nname: *l8\n", "expand to more than 10,000 values"),  # a wrong type too
        ("lora: &x\n  r: 4\n  more: *x\n", "a recursive value"),
        ("lora: &x [1, *x]\n", "a recursive value"),
    ],
    ids=["bomb-in-a-list", "bomb-as-a-wrong-type", "recursive-mapping", "recursive-list"],
)
def test_yaml_aliases_are_bounded_before_any_run_directory(capsys, tmp_path, text, phrase):
    """A few hundred bytes of aliases that would expand to 9 ** 9 values: refused at once, by the file."""
    path = tmp_path / "bomb.yaml"
    path.write_text(text, encoding="utf-8")
    code, err = run_cli(capsys, "run", "--config", path, "--output", tmp_path / "run")
    check(code, err, str(path), phrase, "line ")
    assert len(err) < 1000 and not (tmp_path / "run").exists()


def test_yaml_aliases_in_an_override_are_bounded(capsys, tmp_path):
    bomb = "[" + ", ".join(line.split(": ", 1)[1] for line in _alias_bomb(6)) + "]"
    code, err = run_cli(capsys, "run", "--output", tmp_path / "run", f"lora.target_modules={bomb}")
    check(code, err, "override lora.target_modules=", "expand to more than 10,000 values")
    assert len(err) < 1000 and not (tmp_path / "run").exists()


def test_yaml_aliases_that_share_a_block_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nlora:\n  target_modules: &t [q_proj, v_proj]\neval:\n  decoding: greedy\n", "utf-8")
    assert load_config(path).lora.target_modules == ["q_proj", "v_proj"]


# --- 2. deep nesting (100,000 levels, generated: too large to store) ---------------------------


@pytest.fixture
def deep(tmp_path):
    brackets = "[" * DEPTH + "]" * DEPTH
    files = {
        "data.json": '{"data": ' + brackets + "}",
        "data_objects.json": '{"a": ' * DEPTH + "1" + "}" * DEPTH,
        "pred.json": '{"a1p0q0": ' + brackets + "}",
        "pred.jsonl": '{"id": "a1p0q0", "prediction": "x"}\n{"id": "b", "prediction": ' + brackets + "}\n",
        "config.yaml": "train:\n  epochs: " + "[" * DEPTH + "\n",
        "metrics.json": brackets,
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_deeply_nested_data(capsys, deep):
    for name in ("data.json", "data_objects.json"):
        check(*run_cli(capsys, "stats", deep / name), deep / name, "nested too deeply")


def test_deeply_nested_predictions(capsys, deep):
    check(*run_cli(capsys, "score", GOOD_DATA, deep / "pred.json"), deep / "pred.json", "nested too deeply")
    check(*run_cli(capsys, "score", GOOD_DATA, deep / "pred.jsonl"), deep / "pred.jsonl", "nested too deeply", "line 2")


def test_deeply_nested_config_and_override(capsys, deep):
    out = deep / "run"
    check(*run_cli(capsys, "run", "--config", deep / "config.yaml", "--output", out), "nested too deeply")
    check(
        *run_cli(capsys, "run", "--output", out, "train.epochs=" + "[" * DEPTH + "]" * DEPTH),
        "override train.epochs=[[[",
        "nested too deeply",
    )


def test_deeply_nested_metrics(capsys, deep):
    run = deep / "run"
    run.mkdir()
    (run / "metrics.json").write_text((deep / "metrics.json").read_text())
    check(*run_cli(capsys, "report", run, "--output", deep / "out"), run / "metrics.json", "nested too deeply")


# --- 3. lone surrogates (the corpus has one per field; here: a valid pair is not refused) -------


def test_surrogate_pair_escape_is_a_character(tmp_path):
    text = GOOD_DATA.read_text(encoding="utf-8").replace('"東アジア"', '"東アジア\\ud83d\\ude00"')
    text = text.replace("気象現象である。", "気象現象である。東アジア\\ud83d\\ude00")
    (tmp_path / "d.json").write_text(text, encoding="utf-8")
    assert load_split(tmp_path / "d.json").questions[0].answers == ("東アジア😀",)


def test_surrogate_in_an_unknown_prediction_id_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"a1p0q0": "x", "zz\\udc80": "y"}', encoding="utf-8")
    with pytest.raises(InputError, match="lone surrogate") as info:
        load_predictions(path, load_split(GOOD_DATA).questions, allow_unknown_ids=True)
    assert info.value.where == "id zz\\udc80"


# --- 4. ask: bytes that are not UTF-8, run directories without a model --------------------------


def make_run_dir(root: Path, *, adapter: bool = False, base: bool = False, config: str | None = None) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config or config_to_yaml(load_config("tiny-cpu")), encoding="utf-8")
    for present, folder, names in (
        (adapter, "adapter", ("config.json", "model.safetensors")),  # tiny-cpu trains every weight (no LoRA)
        (base, "base", ("config.json", "model.safetensors", "tokenizer.json")),
    ):
        if present:
            (run / folder).mkdir()
            for name in names:
                (run / folder / name).write_text("{damaged", encoding="utf-8")
    return run


def test_ask_with_bytes_that_are_not_utf8(tmp_path):
    run = make_run_dir(tmp_path)
    for option in ("--context", "--question"):
        texts = {"--context": "梅雨は東アジアの気象現象である。", "--question": "梅雨はどこの気象現象か。"}
        argv = [sys.executable, "-m", "jsquad_lora.cli", "ask", "--run", str(run)]
        for name, text in texts.items():
            argv += [name, text.encode("shift_jis") if name == option else text]
        result = subprocess.run(argv, capture_output=True)
        err = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 2 and "Traceback" not in err, err
        assert f"error: {option}: not UTF-8 text: the byte 0x" in err and "fix:" in err


def test_ask_on_a_run_without_a_trained_model(capsys, tmp_path):
    run = make_run_dir(tmp_path)
    argv = ["ask", "--run", run, "--context", "梅雨は東アジアの気象現象である。", "--question", "どこの現象か。"]
    check(*run_cli(capsys, *argv), run, "adapter/ is missing", "--resume")
    (run / "adapter").mkdir()
    check(*run_cli(capsys, *argv), run / "adapter", "config.json, model.safetensors missing")
    (run / "config.yaml").write_text(config_to_yaml(load_config("tiny-cpu", ["lora.enabled=true"])), encoding="utf-8")
    check(*run_cli(capsys, *argv), run / "adapter", "adapter_config.json, adapter_model.safetensors missing")


def test_ask_on_a_tiny_run_without_its_base_model(capsys, tmp_path):
    run = make_run_dir(tmp_path, adapter=True)
    argv = ["ask", "--run", run, "--context", "梅雨は東アジアの気象現象である。", "--question", "どこの現象か。"]
    check(*run_cli(capsys, *argv), run / "base", "base model is missing", "model.safetensors")


def test_ask_on_a_damaged_model(capsys, tmp_path):
    run = make_run_dir(tmp_path, adapter=True, base=True)
    argv = ["ask", "--run", run, "--context", "梅雨は東アジアの気象現象である。", "--question", "どこの現象か。"]
    check(*run_cli(capsys, *argv), run, "the run's model could not be loaded")


@pytest.mark.parametrize("config", ["name: [unclosed\n", "train:\n  epochs: 1\n  epochs: 2\n", "- a list\n"])
def test_ask_on_a_run_whose_config_is_broken(capsys, tmp_path, config):
    run = make_run_dir(tmp_path, config=config)
    argv = ["ask", "--run", run, "--context", "梅雨は東アジアの気象現象である。", "--question", "どこの現象か。"]
    check(*run_cli(capsys, *argv), run / "config.yaml", "run's own config.yaml")


def test_ask_on_a_missing_directory(capsys, tmp_path):
    argv = ["ask", "--run", tmp_path / "nope", "--context", "梅雨は東アジアの現象。", "--question", "どこか。"]
    check(*run_cli(capsys, *argv), tmp_path / "nope", "run directory not found")


# --- 5. model directories with parts missing ---------------------------------------------------


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny saved model, then copies with one part missing."""
    from jsquad_lora.config.schema import ModelConfig
    from jsquad_lora.model.sources.tiny import build_char_tokenizer, build_tiny_model

    root = tmp_path_factory.mktemp("models")
    tokenizer = build_char_tokenizer(["梅雨は東アジアの気象現象である。"])
    model = build_tiny_model(ModelConfig(tiny_layers=1, tiny_hidden=16, tiny_heads=2, tiny_intermediate=32), tokenizer)
    dirs = {name: root / name for name in ("empty", "no_tokenizer", "no_config", "config_tokenizer_only", "no_type")}
    for path in dirs.values():
        path.mkdir()
    for name in ("no_tokenizer", "no_type"):
        model.save_pretrained(dirs[name])
    (dirs["no_type"] / "config.json").write_text("{}", encoding="utf-8")
    tokenizer.save_pretrained(dirs["no_type"])
    model.save_pretrained(dirs["no_config"])
    tokenizer.save_pretrained(dirs["no_config"])
    (dirs["no_config"] / "config.json").unlink()
    model.save_pretrained(dirs["config_tokenizer_only"])  # a tokenizer_config.json without vocabulary
    (dirs["config_tokenizer_only"] / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "GPTNeoXTokenizer"}', encoding="utf-8"
    )
    return dirs


@pytest.mark.parametrize(
    "name,phrase",
    [
        ("empty", "the model directory is empty"),
        ("no_config", "no config.json in this model directory"),
        ("no_type", "model_type"),
        ("no_tokenizer", "no tokenizer files in this model directory"),
        ("config_tokenizer_only", "the tokenizer has no vocabulary"),
    ],
)
def test_model_directory_with_parts_missing(capsys, tmp_path, model_dirs, name, phrase):
    path = model_dirs[name]
    argv = ["run", "--output", tmp_path / "run", f"model.name={path}", "eval.before=false", f"data.dir={GOOD_DATA}"]
    check(*run_cli(capsys, *argv), path, phrase)


def test_tokenizer_option_with_parts_missing(capsys, model_dirs):
    for name in ("empty", "no_tokenizer", "config_tokenizer_only"):
        argv = ["prompt", GOOD_DATA, "--id", "a1p0q0", "--template", "chat", "--tokenizer", model_dirs[name]]
        check(*run_cli(capsys, *argv), model_dirs[name])


def test_model_name_that_is_a_missing_path_or_a_file(capsys, tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    for name, phrase in (
        (tmp_path / "nope", "model directory not found"),
        (tmp_path / "weights.safetensors", "not a model directory but a file"),
    ):
        argv = ["run", "--output", tmp_path / "run", f"model.name={name}", f"data.dir={GOOD_DATA}"]
        check(*run_cli(capsys, *argv), name, phrase)


# --- 6. report: a broken metrics.json is an error; broken optional files are skipped ------------


def _metrics() -> dict:
    return {
        "model": "tiny",
        "before": {"jglue": {"exact_match": 1.0, "f1": 2.0, "count": 1}},
        "after": {"jglue": {"exact_match": 3.0, "f1": 4.0, "count": 1}},
    }


@pytest.mark.parametrize(
    "content,phrase,where",
    [
        ('{"model": "tiny", "before": {"jglue": {"exact', "invalid JSON", "line 1, column"),
        ('{"model": "tiny",\n "model": "x"}', "duplicate key 'model'", "line 2, column 2"),
        ('"just a string"', "not a JSON object (got a string)", ""),
        (b"\xff\xfe{}", "not UTF-8", ""),
    ],
)
def test_report_on_broken_metrics(capsys, tmp_path, content, phrase, where):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "metrics.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(ReportInputError, match=re.escape(phrase)):
        load_run(run)
    check(*run_cli(capsys, "report", run, "--output", tmp_path / "out"), path, phrase, where)
    assert not (tmp_path / "out").exists()


def test_report_survives_corrupt_optional_files(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    metrics = _metrics() | {
        "model": "tiny\ud800",  # a lone surrogate (from a "\\ud800" escape) must not break writing UTF-8
        "base_model": ["not", "a", "card"],
        "train": {"seconds": "slow", "tokens_per_second": None},
        "eval": {"seconds": float("nan")},
        "sample": {"questions": 1, "of": 2, "em_standard_error": ["x"]},
    }
    metrics["after"]["stability"] = {"exact_match": "high", "f1": float("inf"), "count": "1"}
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (run / "side_check.json").write_text("[1, 2]", encoding="utf-8")
    (run / "loss.jsonl").write_text(
        '{"step": "1", "loss": 2.0}\n{"step": 2, "loss": "x"}\n{"step": Infinity, "loss": 1.0}\n'
        '{"step": 3, "loss": NaN}\n{"step": true, "loss": 1.0}\n{"step": 4, "loss": 1.5}\n'
        + '{"step": 5, "loss": '
        + "[" * DEPTH
        + "}\n",
        encoding="utf-8",
    )
    rows = [
        {"id": ["q"], "question": {"a": 1}, "prediction": "\ud800", "golds": 5, "em": "yes", "f1": "x"},
        {"id": "q2", "question": "問", "prediction": "答", "golds": "答", "em": True, "f1": float("nan")},
        {"id": "q3", "prediction": None, "golds": None, "em": None, "f1": None},
    ]
    (run / "predictions-after.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (run / "config.yaml").mkdir()  # not a file: left out
    written = write_report([run], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "tiny\\ud800" in md and "3.00" in md
    assert [p.name for p in written] == ["report.md", "report.html", "scores.png", "loss.png"]
    summary = load_run(run)
    assert summary.side_check is None and summary.loss == [(4, 1.5)]
    assert [r.get("id") for r in summary.examples] == [["q"], "q2", "q3"]  # em not a number: counted wrong
    assert "side_check.json" in caplog.text


@pytest.mark.parametrize("content", ["{trunc", "[" * DEPTH, '{"a": 1, "a": 2}', "null"])
def test_report_skips_a_broken_side_check(tmp_path, caplog, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(_metrics()), encoding="utf-8")
    (run / "side_check.json").write_text(content, encoding="utf-8")
    assert load_run(run).side_check is None
    write_report([run], tmp_path / "out")
    assert "side_check.json" in caplog.text


def test_report_side_check_that_is_a_directory(tmp_path):
    run = tmp_path / "run"
    (run / "side_check.json").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(_metrics()), encoding="utf-8")
    assert load_run(run).side_check is None


def test_report_output_that_is_a_file(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(_metrics()), encoding="utf-8")
    (tmp_path / "out").write_text("a file", encoding="utf-8")
    check(*run_cli(capsys, "report", run, "--output", tmp_path / "out"), tmp_path / "out", "cannot write the report")


# --- 7. MeCab: a million characters must not crash the stability scorer ------------------------


def test_mecab_chunks_are_bounded_and_exact():
    short = "梅雨は東アジアの気象現象である。" * 100
    assert len(short) <= MECAB_MAX_CHARS and mecab_chunks(short) == [short]
    spaced = " ".join(["梅雨は東アジアの気象現象である。"] * 2000)
    chunks = mecab_chunks(spaced)
    assert len(chunks) > 1 and all(len(c) <= MECAB_MAX_CHARS for c in chunks)
    assert " ".join(chunks) == spaced  # cut at spaces only: MeCab drops them, the tokens are the same
    from jsquad_lora.util.mecab import tagger

    assert [t for c in chunks for t in tagger("-Owakati").parse(c).split()] == tagger("-Owakati").parse(spaced).split()
    unbroken = "あ" * (3 * MECAB_MAX_CHARS + 5)
    assert "".join(mecab_chunks(unbroken)) == unbroken and max(map(len, mecab_chunks(unbroken))) == MECAB_MAX_CHARS
    punctuated = "梅雨は東アジアの気象現象である。" * 500
    assert all(c.endswith("。") for c in mecab_chunks(punctuated)[:-1])
    assert _stability_tokens(punctuated) == ["梅雨", "は", "東", "アジア", "の", "気象", "現象", "で", "ある"] * 500


def test_million_character_prediction_through_score(tmp_path):
    """In a subprocess, so a segfault (exit 139) fails this test instead of killing pytest."""
    path = tmp_path / "pred.json"
    path.write_text(json.dumps({"a1p0q0": "あ" * 1_000_000}, ensure_ascii=False), encoding="utf-8")
    for metric in ("stability", "jglue", "llmjp"):
        argv = [sys.executable, "-m", "jsquad_lora.cli", "score", str(GOOD_DATA), str(path), "--metric", metric]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (metric, result.returncode, result.stderr[-2000:])
        assert json.loads(result.stdout)["exact_match"] == 0.0


# --- 9. the tool's own JSONL with line separators inside strings ------------------------------


def test_own_jsonl_with_unicode_line_separators_scores(capsys, tmp_path):
    answers = {"q0": "東\u2028アジア", "q1": "北\u2029アジア", "q2": "南\u0085アジア"}
    context = "梅雨は" + "、".join(answers.values()) + "の気象現象である。"
    qas = [
        {"id": qid, "question": f"どこの\u2028現象か{qid}", "answers": [{"text": a, "answer_start": context.index(a)}]}
        for qid, a in answers.items()
    ]
    data = tmp_path / "data.json"
    data.write_text(
        json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}, ensure_ascii=False),
        encoding="utf-8",
    )
    rows = [
        {"id": q["id"], "question": q["question"], "prediction": a, "golds": [a], "em": 1.0, "f1": 1.0}
        for q, a in zip(qas, answers.values())
    ]
    predictions = tmp_path / "predictions-after.jsonl"
    predictions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert "\u2028" in predictions.read_text(encoding="utf-8")  # written raw, as the tool writes it
    for metric in ("jglue", "stability", "llmjp"):
        assert main(["score", str(data), str(predictions), "--metric", metric]) == 0
        assert json.loads(capsys.readouterr().out)["exact_match"] == 100.0
    assert score_predictions(load_split(data).questions, load_predictions(predictions), "jglue").count == 3


# --- 10, 11. overrides named as the source; non-finite numbers ----------------------------------


@pytest.mark.parametrize(
    "override,phrase",
    [
        ("train.epochs=x", "expected float, got str 'x'"),
        ("train.epochz=3", "unknown key"),
        ("train=5", "expected a mapping"),
        ("train.epochs.x=3", "is not a section"),
        ("train.scheduler=sometimes", "'sometimes' is not allowed"),
        ("train.learning_rate=nan", "must be a finite number, got nan"),
        ("train.epochs=inf", "must be a finite number, got inf"),
        ("train.epochs=-.inf", "must be a finite number, got -inf"),
        ("train.epochs=1e400", "must be a finite number, got inf"),
        ("train.epochs=1" + "0" * 400, "too large for a number"),
        ("train.learning_rate=.NaN", "must be a finite number, got nan"),
    ],
)
def test_override_errors_name_the_override(capsys, tmp_path, override, phrase):
    code, err = run_cli(capsys, "run", "--config", "tiny-cpu", "--output", tmp_path / "run", override)
    check(code, err, f"error: override {override[:100]}", phrase)
    assert "tiny-cpu.yaml" not in err


def test_a_file_error_next_to_an_override_still_names_the_file(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  epochs: three\n", encoding="utf-8")
    code, err = run_cli(capsys, "run", "--config", path, "--output", tmp_path / "run", "train.batch_size=4")
    check(code, err, f"error: {path}: train.epochs", "expected float")
    assert "override" not in err


# --- 12. command-line edges: degenerate --ids, a reader that stops early, wide values, long values ----


@pytest.mark.parametrize("ids, code, phrase", [([], 2, "the list of ids is empty"), (["a1p0q0", "a1p0q0"], 0, "")])
def test_score_with_a_degenerate_ids_file(capsys, tmp_path, ids, code, phrase):
    (tmp_path / "ids.json").write_text(json.dumps(ids), "utf-8")
    (tmp_path / "p.json").write_text('{"a1p0q0": "東アジア"}', "utf-8")
    result, err = run_cli(capsys, "score", GOOD_DATA, tmp_path / "p.json", "--ids", tmp_path / "ids.json")
    if code:
        check(result, err, str(tmp_path / "ids.json"), phrase)
    else:
        assert result == 0 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv",
    [["stats", "--json", GOOD_DATA], ["stats", GOOD_DATA], ["prompt", GOOD_DATA, "--id", "a1p0q0"]],
    ids=["stats-json", "stats", "prompt"],
)
def test_output_into_a_pipe_closed_early(argv):
    """`jsquad-lora stats --json FILE | head -0`: the reader is gone before the first line is written."""
    process = subprocess.Popen(
        [sys.executable, "-m", "jsquad_lora.cli", *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and "Traceback" not in err and "Exception ignored" not in err, err


def test_stats_table_keeps_its_columns_for_large_values(capsys, tmp_path):
    data = json.loads(GOOD_DATA.read_text("utf-8"))
    paragraph = data["data"][0]["paragraphs"][0]
    paragraph["context"] += "あ" * 12_345_678
    path = tmp_path / "long.json"
    path.write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    assert main(["stats", str(path)]) == 0
    table = capsys.readouterr().out.splitlines()[1:5]
    assert "12,345,694" in table[1]  # the passage's characters, its 「梅雨 [SEP] 」 title prefix not counted
    assert len({len(line) for line in table}) == 1  # every row as wide as the header
    ends = {i for i, c in enumerate(table[0]) if c != " " and (i + 1 == len(table[0]) or table[0][i + 1] == " ")}
    ends.remove(min(ends))  # the first column is left-aligned
    for line in table[1:]:  # every other cell ends where its header does (right-aligned)
        assert ends <= {i for i, c in enumerate(line) if c != " " and (i + 1 == len(line) or line[i + 1] == " ")}


@pytest.mark.parametrize(
    "argv",
    [
        ["prompt", GOOD_DATA, "--id", "x" * 100_000],
        ["run", "--output", "RUN", "train.epochs=" + "x" * 100_000],
        ["run", "--output", "RUN", "eval.decoding=" + "y" * 100_000],
        ["run", "--output", "RUN", "x" * 100_000 + ".epochs=1"],
    ],
    ids=["prompt-id", "override-value", "override-choice", "override-key"],
)
def test_errors_cut_long_values_and_say_how_long(capsys, tmp_path, argv):
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    code, err = run_cli(capsys, *argv)
    check(code, err, "characters in all")
    assert len(err) < 3000, len(err)
