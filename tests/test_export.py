"""`jsquad-lora export` on a tiny LoRA run: the adapter, the merged model and a full fine-tune's model load
with plain transformers (peft for the adapter) and give the run's own answers; the model card says what
the model is; an output directory that is not new, empty or an earlier export is refused untouched."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
import torch
import yaml
from conftest import TINY_TEST, needs_data

from jsquad_lora.cli import main
from jsquad_lora.config.load import load_config
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.evaluate.loop import build_prompts
from jsquad_lora.generate.decoding import decoding_config
from jsquad_lora.generate.greedy import generate_answers
from jsquad_lora.prompts.fewshot import make_renderer
from jsquad_lora.tuned.export import CONFIG_NAME, EXPORT_MARKER
from jsquad_lora.util.devices import inference_dtype

pytestmark = needs_data()
QUESTIONS = 24  # all the run evaluated (TINY_TEST's data.eval_limit)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-lora"
    # a learning rate at which the tiny adapter changes most answers: comparing answers then shows it was loaded
    assert main(["run", "--output", str(out), *TINY_TEST, "lora.enabled=true", "train.learning_rate=2e-2"]) == 0
    return out


def run_answers(run_dir, stage: str = "after") -> list[str]:
    rows = [json.loads(line) for line in (run_dir / f"predictions-{stage}.jsonl").read_text().splitlines()]
    return [row["prediction"] for row in rows[:QUESTIONS]]


def answers_of(model, tokenizer, run_dir) -> list[str]:
    """The first dev questions answered as the run's evaluation answered them: its prompts, its decoding
    config, its generation dtype."""
    cfg = load_config(run_dir / "config.yaml")
    model = model.to(getattr(torch, inference_dtype(cfg.eval.dtype, cfg.model.dtype)))
    questions = load_split(resolve_split(None, "valid")).questions[:QUESTIONS]
    budget = cfg.model.max_length - cfg.eval.max_new_tokens
    prompts, passages, _ = build_prompts(questions, make_renderer(cfg, tokenizer, ()), tokenizer, budget)
    return generate_answers(model, tokenizer, prompts, passages, decoding_config(cfg))


def test_adapter_export_loads_with_peft_and_answers_as_the_run(run_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    assert main(["export", str(run_dir), "--output", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md", CONFIG_NAME} <= names
    assert not any(n.endswith((".bin", ".pt", ".tmp")) for n in names) and "model.safetensors" not in names
    assert not list(tmp_path.glob(".*.tmp"))  # built beside the output and renamed: nothing left over
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((run_dir / "base").resolve())  # found from anywhere

    tokenizer = AutoTokenizer.from_pretrained(out)
    base_alone = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    assert answers_of(base_alone, tokenizer, run_dir) == run_answers(run_dir, "before") != run_answers(run_dir)
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, out).merge_and_unload()
    assert answers_of(model, tokenizer, run_dir) == run_answers(run_dir)

    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and meta["base_model"] == config["base_model_name_or_path"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    after = metrics["after"]["jglue"]
    assert f"| after tuning | {after['exact_match']:.2f} | {after['f1']:.2f} |" in card
    lora = load_config(run_dir / "config.yaml").lora
    assert "license: none (random weights)" in card and f"LoRA r={lora.r}, alpha={lora.alpha}" in card
    assert "質問:梅雨がみられるのはどこか。" in card  # a sample prompt, in the run's template
    assert (out / CONFIG_NAME).read_bytes() == (run_dir / "config.yaml").read_bytes()


def test_merged_export_loads_with_plain_transformers(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--output", str(out), "--merge"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert "adapter_config.json" not in names
    assert all(p.stat().st_mode & stat.S_IROTH for p in out.iterdir())  # readable by others (umask 022)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(model, "peft_config")
    assert answers_of(model, AutoTokenizer.from_pretrained(out), run_dir) == run_answers(run_dir)
    assert "library_name: transformers" in (out / "README.md").read_text()


def test_full_fine_tune_exports_its_whole_model(run_dir, tmp_path):
    """A run with lora.enabled=false keeps the whole model in adapter/: made here from the merged export."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = tmp_path / "full-run"
    shutil.copytree(run_dir, full, ignore=shutil.ignore_patterns("checkpoints", "adapter"))
    assert main(["export", str(run_dir), "--output", str(full / "adapter"), "--merge"]) == 0
    (full / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("enabled: true", "enabled: false"))
    out = tmp_path / "export"
    assert main(["export", str(full), "--output", str(out)]) == 0
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert "every weight" in (out / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert answers_of(model, AutoTokenizer.from_pretrained(out), run_dir) == run_answers(run_dir)


def test_export_refuses_what_it_must_not_replace(run_dir, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["export", str(run_dir), "--output", str(foreign)]) == 2
    assert "not an export of this tool" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--output", str(foreign), "--overwrite"]) == 2
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and (foreign / "notes.txt").read_text() == "keep me"

    (tmp_path / "a-file").write_text("x")
    assert main(["export", str(run_dir), "--output", str(tmp_path / "a-file")]) == 2

    earlier = tmp_path / "earlier"
    assert main(["export", str(run_dir), "--output", str(earlier)]) == 0
    assert (earlier / EXPORT_MARKER).is_file()
    capsys.readouterr()
    assert main(["export", str(run_dir), "--output", str(earlier)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (earlier / "stale.txt").write_text("from the earlier export")
    assert main(["export", str(run_dir), "--output", str(earlier), "--overwrite", "--merge"]) == 0
    assert not (earlier / "stale.txt").exists() and (earlier / "model.safetensors").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(run_dir), "--output", str(empty)]) == 0

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("adapter"))
    capsys.readouterr()
    assert main(["export", str(unfinished), "--output", str(tmp_path / "x")]) == 2
    assert "adapter/ is missing" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("target", ["empty", "earlier", "dangling"])
def test_export_through_a_symlinked_output(run_dir, tmp_path, target):
    real, link = tmp_path / "real", tmp_path / "link"
    if target == "empty":
        real.mkdir()
    elif target == "earlier":
        assert main(["export", str(run_dir), "--output", str(real)]) == 0
    link.symlink_to(real, target_is_directory=True)
    flags = ["--overwrite"] if target == "earlier" else []
    assert main(["export", str(run_dir), "--output", str(link), *flags]) == 0
    assert link.is_symlink() and link.resolve() == real.resolve()  # the link kept, its target written
    assert (real / EXPORT_MARKER).is_file() and (real / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.old"))


def test_export_onto_a_full_disk_is_a_clear_error_and_leaves_nothing(run_dir, small_disk, capsys):
    disk = small_disk(256)  # room for the adapter, not for the merged model
    out = disk / "merged"
    assert main(["export", str(run_dir), "--output", str(out), "--merge"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing the export (merged)" in err and "MiB free" in err, err
    assert "Traceback" not in err and list(disk.iterdir()) == []  # nothing half-written left
    disk.resize(64 * 1024)
    assert main(["export", str(run_dir), "--output", str(out), "--merge"]) == 0
    assert (out / "model.safetensors").is_file()
