"""The registries issue 20 added: a model source, an evaluation backend and a data format are each one
registration, and the run, the config, the export and the readers follow it with no other edit."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_TEST

from jsquad_lora.cli import main
from jsquad_lora.config.load import load_config
from jsquad_lora.data.formats import DataFormat, read_split
from jsquad_lora.data.question import Question, Split
from jsquad_lora.errors import InputError
from jsquad_lora.evaluate.backends import EvalBackend
from jsquad_lora.model.source import ModelSource, base_model_and_tokenizer, base_model_card, model_source
from jsquad_lora.model.sources.tiny import TINY, build_char_tokenizer, build_tiny_model
from jsquad_lora.registry import DATA_FORMATS, EVAL_BACKENDS, MODEL_SOURCES
from jsquad_lora.util.jsonio import read_jsonl


@pytest.fixture
def registries():
    """The registries as they were, restored after the test (a test's registrations do not leak)."""
    saved = [(r, dict(r)) for r in (MODEL_SOURCES, EVAL_BACKENDS, DATA_FORMATS)]
    yield
    for registry, content in saved:
        registry.clear()
        registry.update(content)


def test_a_registered_model_source_provides_the_base_model_and_its_card(registries, tmp_path):
    cfg = load_config("tiny-cpu", ["model.tiny_layers=1", "model.tiny_hidden=32", "model.tiny_heads=2"])
    tokenizer = build_char_tokenizer(["東京都は日本の首都である。"])
    directory = tmp_path / "fixture-model"
    build_tiny_model(cfg.model, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    MODEL_SOURCES.register(
        "fixture",
        ModelSource(
            "fixture",
            "a saved model under another name",
            claims=lambda model: model.name == "my-fixture",
            resolve=lambda model: str(directory),
            describe=lambda model: ("a test fixture", "MIT"),
            hf_license="mit",
        ),
    )
    cfg = load_config("tiny-cpu", ["model.name=my-fixture"])
    assert model_source(cfg.model).name == "fixture" and model_source(load_config("tiny-cpu").model).name == TINY
    model, loaded_tokenizer = base_model_and_tokenizer(cfg, tmp_path / "run", ())
    assert loaded_tokenizer("東京", add_special_tokens=False)["input_ids"] == tokenizer("東京")["input_ids"]
    card = base_model_card(cfg.model, model)
    assert (card["name"], card["source"], card["license"]) == ("my-fixture", "a test fixture", "MIT")
    assert card["parameters"] == sum(p.numel() for p in model.parameters())


def _echo_backend(cfg, run_dir, model, tokenizer, adapter, engines):
    """Answers every prompt with its last two characters but spaces: no model involved."""

    def generate(prompts, decoding, on_batch):
        answers = [p.rstrip()[-2:] for p in prompts]
        on_batch(list(range(len(prompts))), answers)
        return answers

    return generate


def test_a_registered_evaluation_backend_is_a_config_value_and_answers_a_run(registries, tmp_path):
    checked = []
    EVAL_BACKENDS.register("echo", EvalBackend("echo", "echoes the prompt's end", checked.append, _echo_backend))
    with pytest.raises(InputError, match="'nope' is not allowed"):
        load_config("tiny-cpu", ["eval.backend=nope"])
    run = tmp_path / "run"
    argv = [
        "evaluate",
        "--output",
        str(run),
        *TINY_TEST,
        "eval.backend=echo",
        "data.eval_limit=6",
        "eval.side_check=false",
    ]
    assert main(argv) == 0
    assert checked == ["extractive"]  # the backend's check saw the run's decoding mode before any work
    rows = [row for _, row in read_jsonl(run / "predictions-before.jsonl")]
    assert [row["prediction"] for row in rows] == ["ム:"] * 6  # the seed prompt ends "システム: "
    assert json.loads((run / "metrics.json").read_text())["before"]["jglue"]["count"] == 6


def test_a_registered_data_format_is_read_by_read_split(registries, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        '{"id": "q1", "context": "東京都は日本の首都である。", "question": "首都は？", "answer": "東京都"}\n', "utf-8"
    )

    def load(file):
        rows = [row for _, row in read_jsonl(file)]
        questions = [
            Question(r["id"], "", r["context"], r["question"], (r["answer"],), (r["context"].index(r["answer"]),))
            for r in rows
        ]
        return Split(file, tuple(questions), ())

    DATA_FORMATS.register(
        "qa-jsonl",
        DataFormat("qa-jsonl", "one question a line", lambda source: False, lambda source, split, options: load(path)),
    )
    split = read_split(str(path), "valid", format="qa-jsonl")
    assert [(q.id, q.answers, q.answer_starts) for q in split.questions] == [("q1", ("東京都",), (0,))]
    with pytest.raises(ValueError, match="Unknown data format 'nope'. Available: jsquad, table, saved, hub, qa-jsonl"):
        read_split(str(path), "valid", format="nope")
