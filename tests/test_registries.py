"""Adding a template, a scorer or a decoding mode is one registration: config values, CLI choices,
evaluation, metrics and the report's columns follow it with no other edit."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LogitsProcessor

from jsquad_lora.cli import main
from jsquad_lora.config.load import load_config
from jsquad_lora.config.schema import ModelConfig
from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError
from jsquad_lora.evaluate import scorers as scoring
from jsquad_lora.generate import decoding
from jsquad_lora.prompts import templates as prompts

QUESTIONS = [
    Question("q1", "", "東京都は日本の首都である。", "日本の首都は？", ("東京都",), (0,)),
    Question("q2", "", "富士山の標高は3776メートルである。", "富士山の標高は？", ("3776メートル",), (6,)),
]


@pytest.fixture
def registries():
    """The registries as they were, restored after the test (a test's registrations do not leak)."""
    saved = [(r, dict(r)) for r in (prompts.TEMPLATES, scoring.SCORERS, decoding.DECODING_MODES)]
    yield
    for registry, content in saved:
        registry.clear()
        registry.update(content)


def _data_file(tmp_path):
    paragraphs = []
    for q in QUESTIONS:
        answer = {"text": q.answers[0], "answer_start": q.answer_starts[0]}
        paragraphs.append({"context": q.context, "qas": [{"id": q.id, "question": q.question, "answers": [answer]}]})
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}, ensure_ascii=False), "utf-8")
    return path


def test_a_registered_template_is_a_config_value_and_a_cli_choice(registries, tmp_path, capsys):
    @prompts.register_template("qa-short", "question first, then the passage")
    def qa_short(question, examples, tokenizer):
        return f"Q:{question.question} P:{question.context} A:"

    assert load_config("tiny-cpu", ["prompt.template=qa-short"]).prompt.template == "qa-short"
    assert main(["prompt", str(_data_file(tmp_path)), "--id", "q1", "--template", "qa-short", "--with-answer"]) == 0
    assert capsys.readouterr().out == "Q:日本の首都は？ P:東京都は日本の首都である。 A:東京都"
    with pytest.raises(ValueError, match="registered twice"):
        prompts.register_template("qa-short", "again")(qa_short)


def test_unknown_names_list_what_is_available(registries):
    with pytest.raises(InputError, match="Unknown template 'nope'") as info:
        prompts.render_prompt(QUESTIONS[0], "nope")
    assert "seed, newline, harness, fintan, chat" in str(info.value)
    with pytest.raises(InputError, match="Unknown scorer 'nope'"):
        scoring.score_predictions(QUESTIONS, {}, "nope")
    with pytest.raises(ValueError, match="Unknown decoding mode 'nope'. Available: greedy, extractive"):
        decoding.DecodingConfig(mode="nope")
    with pytest.raises(InputError, match="'nope' is not allowed"):
        load_config("tiny-cpu", ["eval.decoding=nope"])


def _first_character_question(prediction, golds):
    """EM: the first characters agree; F1: the share of golds with that first character."""
    em = float(bool(prediction) and prediction[0] == golds[0][0])
    return em, sum(bool(prediction) and g[0] == prediction[0] for g in golds) / len(golds)


def _plain_mean(each, questions, question):
    scores = [s if s is not None else (0.0, 0.0) for s in each]
    return 100 * sum(s[0] for s in scores) / len(questions), 100 * sum(s[1] for s in scores) / len(questions)


def test_a_registered_scorer_is_scored_everywhere(registries, tmp_path, capsys):
    from jsquad_lora.evaluate.loop import evaluate
    from jsquad_lora.model.sources.tiny import build_char_tokenizer
    from jsquad_lora.report.render import write_report

    scoring.register_scorer("first-char", "the first character agrees", _plain_mean)(_first_character_question)
    # the CLI
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"q1": "東", "q2": "山"}, ensure_ascii=False), "utf-8")
    assert main(["score", str(_data_file(tmp_path)), str(predictions), "--metric", "first-char"]) == 0
    assert json.loads(capsys.readouterr().out) == {"exact_match": 50.0, "f1": 50.0, "count": 2}
    # an evaluation scores every registered scorer (the generator stands in for a model)
    tokenizer = build_char_tokenizer([prompts.render_prompt(q, with_answer=True) for q in QUESTIONS])
    run = tmp_path / "run"
    run.mkdir()
    result = evaluate(
        None,
        tokenizer,
        QUESTIONS,
        prompts.render_prompt,
        decoding.DecodingConfig(),
        256,
        run / "predictions-after.jsonl",
        progress=False,
        generator=lambda texts, config, on_batch: ["東京都", "富士"],
    )
    assert result.scores["first-char"] == {"exact_match": 50.0, "f1": 50.0, "count": 2}
    assert result.scores["jglue"]["exact_match"] == 50.0
    # the report's table has its columns
    (run / "metrics.json").write_text(json.dumps({"model": "m", "recipe": "r", "after": result.scores}), "utf-8")
    write_report([run], tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text("utf-8")
    assert "first-char EM" in report and "first-char F1" in report


class _EndAtOnce(LogitsProcessor):
    """Every row may only end: each answer is empty."""

    def __init__(self, tokenizer, passages, prompt_length, end_ids, eos_id, stop_strings):
        self.eos_id = eos_id

    def __call__(self, input_ids, scores):
        allowed = torch.full_like(scores, float("-inf"))
        allowed[:, self.eos_id] = 0.0
        return allowed


def test_a_registered_decoding_mode_runs_on_the_backends_it_names(registries):
    from jsquad_lora.evaluate.vllm import check_available
    from jsquad_lora.generate.greedy import generate_answers
    from jsquad_lora.model.sources.tiny import build_char_tokenizer, build_tiny_model

    decoding.register_decoding(decoding.DecodingMode("silent", "ends every answer at once", processor=_EndAtOnce))
    assert load_config("tiny-cpu", ["eval.decoding=silent"]).eval.decoding == "silent"
    with pytest.raises(InputError, match="silent decoding is only implemented on the HF backend"):
        check_available("silent")
    texts = [prompts.render_prompt(q) for q in QUESTIONS]
    tokenizer = build_char_tokenizer(texts)
    torch.manual_seed(0)
    model = build_tiny_model(ModelConfig(tiny_layers=1, tiny_hidden=32, tiny_heads=2, tiny_intermediate=64), tokenizer)
    assert generate_answers(model, tokenizer, texts, None, decoding.DecodingConfig(mode="silent")) == ["", ""]
    greedy = generate_answers(model, tokenizer, texts, None, decoding.DecodingConfig(max_new_tokens=4))
    assert greedy != ["", ""]  # random weights do not end at once: the mode's processor made the difference
