"""Compatibility as a tested property (issue 36).

- The previous release's run directories (tests/fixtures/prev-release, README.md there: the commit and the
  commands) still work with today's code: its unfinished run resumes to the end (from its last checkpoint,
  the same losses as its own uninterrupted run) and its finished run reports and answers.
- The grid: `tiny-cpu` at every model.max_length from 64 to 640, windows as wide as the prompt allows or 32
  passage tokens (with negative windows where abstaining), abstaining or not. Every cell either runs to the
  end with a resolved config.yaml that fixes the window overlap, or is refused by design before any work:
  exit code 2, a message, no run directory.
- Every shipped preset loads and trains a few steps on a tiny stand-in of its real model family.

Every run is in-process (`jsquad_lora.cli.main`), on a tiny model and a few questions: seconds each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import needs_data

from jsquad_lora.cli import main
from jsquad_lora.config import load as config_load
from jsquad_lora.config.load import load_config

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_data()]

PREV = Path(__file__).parent / "fixtures" / "prev-release"
#: the command line both fixture runs were made with (fixtures/prev-release/README.md)
PREV_ARGS = [
    "--config",
    "tiny-cpu",
    "data.train_limit=12",
    "data.eval_limit=6",
    "train.epochs=2",
    "train.batch_size=1",
    "model.tiny_layers=1",
    "model.tiny_hidden=8",
    "model.tiny_heads=2",
    "model.tiny_intermediate=16",
    "train.synthetic_per_passage=0",
    "train.save_steps=2",
    "train.logging_steps=1",
]


def _copy(fixture: str, tmp_path: Path) -> Path:
    """A writable copy of a fixture run directory (the fixture itself is never written)."""
    return Path(shutil.copytree(PREV / fixture, tmp_path / fixture))


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def _losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "loss.jsonl").read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- the previous release's run directories


def test_the_fixtures_are_what_the_readme_says():
    finished, unfinished = _metrics(PREV / "finished"), _metrics(PREV / "unfinished")
    assert finished["finished"] and not unfinished["finished"]
    assert "after" not in unfinished and not (PREV / "unfinished" / "adapter").exists()
    assert sorted(p.name for p in (PREV / "unfinished" / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (PREV / "finished" / "config.yaml").read_text() == (PREV / "unfinished" / "config.yaml").read_text()
    assert sum(p.stat().st_size for p in PREV.rglob("*") if p.is_file()) < 1_000_000


@pytest.mark.parametrize("how", ["same-command", "its-config-yaml"])
def test_an_unfinished_run_of_the_previous_release_resumes(tmp_path, monkeypatch, how):
    """`run --resume` with the command the run was started with (or its own config.yaml): training goes on
    from its last checkpoint (step 4 of 10) to the losses of the same run uninterrupted, the evaluation before
    tuning is not repeated, and the run finishes with its report."""
    from jsquad_lora.train import trainer

    run_dir = _copy("unfinished", tmp_path)
    resumed_from = []
    latest = trainer.latest_checkpoint
    monkeypatch.setattr(trainer, "latest_checkpoint", lambda d: resumed_from.append(latest(d)) or resumed_from[-1])
    args = PREV_ARGS if how == "same-command" else ["--config", str(run_dir / "config.yaml")]
    assert main(["run", "--resume", "--output", str(run_dir), *args]) == 0

    assert [p.name for p in resumed_from] == ["checkpoint-4"]
    metrics, reference = _metrics(run_dir), _metrics(PREV / "finished")
    assert metrics["finished"] and metrics["train"]["steps"] == reference["train"]["steps"] == 10
    assert metrics["after"]["jglue"]["count"] == 6
    got, expected = _losses(run_dir), _losses(PREV / "finished")
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    assert all(abs(g["loss"] - e["loss"]) < 1e-4 for g, e in zip(got, expected))
    before = "predictions-before.jsonl"
    assert (run_dir / before).read_bytes() == (PREV / "unfinished" / before).read_bytes()
    for name in ("report.md", "report.html", "scores.png", "adapter/model.safetensors", "predictions-after.jsonl"):
        assert (run_dir / name).is_file(), name


def test_a_finished_run_of_the_previous_release_reports_and_answers(tmp_path, capsys):
    run_dir = _copy("finished", tmp_path)
    out = tmp_path / "report"
    assert main(["report", str(run_dir), "--output", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert "tiny-cpu" in (out / "report.md").read_text(encoding="utf-8")
    capsys.readouterr()
    context, question = "梅雨は東アジアの気象現象である。", "梅雨はどこの現象か。"
    assert main(["ask", "--run", str(run_dir), "--context", context, "--question", question, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"] is None or answer["answer"] in context


def test_a_finished_run_of_the_previous_release_is_not_run_again(tmp_path, capsys):
    """The same command again (and --resume): nothing is trained, evaluated or written again: exit 0, "nothing
    to do" (its config.yaml holds the old fixed window_overlap: 128, which matches the key now left unset)."""
    run_dir = _copy("finished", tmp_path)
    kept = ("metrics.json", "predictions-after.jsonl", "adapter/model.safetensors", "loss.jsonl", "config.yaml")
    before = {name: (run_dir / name).read_bytes() for name in kept}
    for again in (["run", "--output", str(run_dir)], ["run", "--resume", "--output", str(run_dir)]):
        assert main([*again, *PREV_ARGS]) == 0
        assert "nothing to do" in capsys.readouterr().err
    assert {name: (run_dir / name).read_bytes() for name in kept} == before


# ---------------------------------------------------------------- the grid: lengths x windows x abstention

#: the seed prompt's own characters (instruction, markers): with the question, what a window's prompt holds
#: beside its passage. Questions up to SHORT characters fit a prompt of model.max_length=96 with tiny-cpu's
#: 24 new tokens (43 + 24 + 24 <= 96); JSQuAD's questions: median 24 characters, 90th percentile 48, longest 99
SHORT = 24


@pytest.fixture(scope="module")
def short_questions(tmp_path_factory) -> dict[str, Path]:
    """{"train", "eval"}: SQuAD JSON files of questions of at most SHORT characters: 8 of the test split (3 per
    document at most: several documents, for train.abstain_holdout) and 4 of dev."""
    from jsquad_lora.data.jglue import resolve_split
    from jsquad_lora.data.jsquad import load_split
    from jsquad_lora.data.write import document_of, write_squad_json

    root = tmp_path_factory.mktemp("short")
    files = {}
    for role, split, count in (("train", "test", 8), ("eval", "valid", 4)):
        picked, per_document = [], {}
        for q in load_split(resolve_split(None, split)).questions:
            document = document_of(q)
            if len(q.question) <= SHORT and per_document.get(document, 0) < 3 and len(picked) < count:
                per_document[document] = per_document.get(document, 0) + 1
                picked.append(q)
        files[role] = write_squad_json(root / f"{role}.json", picked)
    return files


#: a cell in seconds: a 1-layer model 32 wide, 8 training and 4 evaluation questions, one epoch, no "before"
GRID_ARGS = [
    "--config",
    "tiny-cpu",
    "model.tiny_layers=1",
    "model.tiny_hidden=32",
    "model.tiny_heads=2",
    "model.tiny_intermediate=64",
    "train.epochs=1",
    "train.batch_size=4",
    "train.synthetic_per_passage=0",
    "eval.before=false",
    "eval.side_check=false",
]
MAX_LENGTHS = [64, 96, 128, 192, 256, 640]
#: refused by design, before any work: {max_length: what the message says}. 64 tokens (characters: the tiny
#: model's tokenizer) less tiny-cpu's 24 new tokens leave 40, fewer than the seed prompt's own 43 characters
REFUSED = {64: "even with its passage removed"}


def _grid():
    for length in MAX_LENGTHS:
        for windows in ("default", "w32"):
            for abstain in (False, True):
                cell = f"len{length}-{windows}-{'abstain' if abstain else 'answer'}"
                yield pytest.param(length, windows, abstain, id=cell)


def _cell_args(length: int, windows: str, abstain: bool) -> list[str]:
    args = [*GRID_ARGS, f"model.max_length={length}", f"eval.abstain={str(abstain).lower()}"]
    if windows == "w32":
        args.append("model.window_tokens=32")
        if abstain:
            args.append("train.negative_windows=true")
    return args


@pytest.mark.parametrize("length, windows, abstain", list(_grid()))
def test_grid(tmp_path, capsys, short_questions, length, windows, abstain):
    out = tmp_path / "run"
    data = [f"data.train={short_questions['train']}", f"data.eval={short_questions['eval']}"]
    code = main(["run", "--output", str(out), *_cell_args(length, windows, abstain), *data])
    err = capsys.readouterr().err
    if length in REFUSED:
        assert code == 2 and REFUSED[length] in err and "Traceback" not in err, err[-2000:]
        assert not out.exists(), "a start refused before any work leaves no run directory"
        return
    assert code == 0, err[-3000:]
    metrics = _metrics(out)
    assert metrics["finished"] and metrics["train"]["steps"] >= 1
    assert metrics["after"]["jglue"]["count"] == 4 and "exact_match" in metrics["after"]["jglue"]
    if length <= 192:  # the dev passages (93 and 121 characters) are read in windows
        assert metrics["eval"].get("windowed_questions", metrics["eval"].get("truncated_prompts")), metrics["eval"]
    model = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["model"]
    overlap = model["window_overlap"]
    assert isinstance(overlap, int) and not isinstance(overlap, bool), f"config.yaml: window_overlap={overlap!r}"
    assert 0 <= overlap < length and (model["window_tokens"] is None or overlap < model["window_tokens"])
    assert load_config(out / "config.yaml").model.window_overlap == overlap  # the resolved config loads as it is


def test_negative_windows_without_abstaining_are_refused_before_any_work(tmp_path, capsys, short_questions):
    out = tmp_path / "run"
    data = [f"data.train={short_questions['train']}", f"data.eval={short_questions['eval']}"]
    args = [*GRID_ARGS, *data, "model.window_tokens=32", "train.negative_windows=true", "eval.abstain=false"]
    assert main(["run", "--output", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "eval.abstain" in err and "train.negative_windows=true" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("length", [96, 128])
def test_a_question_too_long_for_max_length_is_refused_before_any_work(tmp_path, capsys, length):
    """The test split's first question is 78 characters: its prompt is 121 tokens without its passage, more than
    96 or 128 allow. The whole run is refused before any work (no question is cut or left out)."""
    out = tmp_path / "run"
    args = [*GRID_ARGS, "data.train_limit=8", "data.eval_limit=4", f"model.max_length={length}"]
    assert main(["run", "--output", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert "a1025052p0q0" in err and "even with its passage removed" in err and "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------- every shipped preset on a stand-in

PRESETS = sorted(p.stem for p in (Path(config_load.__file__).parent / "presets").glob("*.yaml"))
#: a few questions and steps, whatever the preset (its model, LoRA, prompt, batching and decoding kept)
SMALL = [
    "data.train_sample=null",
    "data.train_sample_cpu_float32=null",
    "data.eval_sample=null",
    "train.epochs=1",
    "train.batch_size=4",
    "train.grad_accum=1",
    "train.save_steps=2",
    "train.logging_steps=1",
    "eval.batch_size=4",
    "eval.max_new_tokens=8",
    "eval.before=false",
    "eval.side_check=false",
]


def _family(name: str) -> str:
    """The stand-in for a preset's model.name."""
    if name == "tiny":
        return "tiny"
    if name.startswith("gemma-3"):
        return "gemma"
    if "rinna" in name or "neox" in name.lower():
        return "rinna"
    if "qwen" in name.lower():
        return "qwen"
    raise AssertionError(f"no stand-in for model.name={name}: add one to tests/test_compat.py")


def _on_cpu(cfg) -> list[str]:
    """What a CPU cannot do of a preset: 8/4-bit weights (bitsandbytes needs CUDA), float16 training, FSDP."""
    out = []
    if cfg.model.load_in_8bit or cfg.model.load_in_4bit:
        out += ["model.load_in_8bit=false", "model.load_in_4bit=false"]
    if cfg.model.dtype == "float16":
        out.append("model.dtype=float32")
    if cfg.model.attn_implementation == "flash_attention_2":
        out.append("model.attn_implementation=sdpa")
    if cfg.train.fsdp:
        out.append("train.fsdp=false")
    return out


def _gemma_standin(directory: Path, questions: dict[str, Path]) -> Path:
    """test_gemma.py's tiny Gemma 3 (sliding and global layers) with a character tokenizer over the questions
    the runs here see and Gemma's chat template (the presets use prompt.template=chat)."""
    from test_gemma import tiny_gemma

    from jsquad_lora.data.jsquad import load_split
    from jsquad_lora.model.sources.gemma import GEMMA_CHAT_TEMPLATE
    from jsquad_lora.model.sources.tiny import build_char_tokenizer
    from jsquad_lora.prompts.templates import SEED_INSTRUCTION, SIDE_CHECK_REQUEST

    texts = [q.context + q.question + "".join(q.answers) for f in questions.values() for q in load_split(f).questions]
    turns = "<start_of_turn>user\nmodel\n<end_of_turn>文章:質問:"
    tokenizer = build_char_tokenizer([*texts, SEED_INSTRUCTION, SIDE_CHECK_REQUEST, turns])
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    tiny_gemma(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def standins(tmp_path_factory, short_questions):
    """{family: a model directory}, made once for the module."""
    from standins import qwen_standin, rinna_standin

    root = tmp_path_factory.mktemp("standins")
    return {
        "rinna": rinna_standin(root / "rinna"),
        "qwen": qwen_standin(root / "qwen"),
        "gemma": _gemma_standin(root / "gemma", short_questions),
    }


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_on_a_stand_in(tmp_path, capsys, standins, short_questions, preset):
    cfg = load_config(preset)
    family = _family(cfg.model.name)
    model = (
        ["model.tiny_layers=1", "model.tiny_hidden=32", "model.tiny_heads=2", "model.tiny_intermediate=64"]
        if family == "tiny"
        else [f"model.name={standins[family]}", "model.gguf_file=null"]
    )
    data = [f"data.train={short_questions['train']}", f"data.eval={short_questions['eval']}"]
    out = tmp_path / "run"
    code = main(["run", "--config", preset, "--output", str(out), *SMALL, *data, *model, *_on_cpu(cfg)])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    metrics = _metrics(out)
    assert metrics["finished"] and metrics["recipe"] == preset and metrics["train"]["steps"] >= 1
    assert metrics["after"]["jglue"]["count"] == 4
    resolved = load_config(out / "config.yaml")
    assert resolved.lora == cfg.lora and resolved.prompt == cfg.prompt and resolved.eval.decoding == cfg.eval.decoding
    assert resolved.train.batching == cfg.train.batching
