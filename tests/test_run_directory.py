"""The run directory never loses a user's files: only marked run directories are resumed into or
emptied, one process per directory (an OS lock), --overwrite is a clean start, a failed start
leaves nothing behind, run names stay plain, files respect the umask, bad values fail at load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import SHARED, TINY_TEST, needs_data

from jsquad_lora.cli import main
from jsquad_lora.config.load import load_config
from jsquad_lora.recipe.rundir import LOCK, MARKER, missing_artefacts, run_directory

FAST = TINY_TEST + ["data.train_limit=16", "data.eval_limit=4", "eval.side_check=false"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _user_folder(path):
    path.mkdir()
    (path / "thesis.tex").write_text("three years of work", "utf-8")
    (path / "data").mkdir()
    (path / "data" / "results.csv").write_text("1,2,3", "utf-8")
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@needs_data()
@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"], ["--overwrite", "--resume"]])
def test_a_folder_of_the_users_is_never_touched(tmp_path, capsys, flags):
    folder = tmp_path / "mine"
    before = _user_folder(folder)
    code, err = run_cli(capsys, "run", "--output", folder, *flags, *FAST)
    assert code == 2 and "not a run directory of jsquad-lora" in err and str(folder) in err
    assert _files(folder) == before  # every file still there, unchanged, nothing added


@needs_data()
@pytest.mark.parametrize("name", ["", "..", "../..", "a/b", "/tmp/x", "runs", "x y"])
def test_run_names_are_plain_names(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setenv("JSQUAD_DIR", str(SHARED))
    monkeypatch.chdir(tmp_path)
    sibling = _user_folder(tmp_path / "runs")  # `name=` once made runs/ itself the run directory
    code, err = run_cli(capsys, "run", *FAST, f"name={name}")
    if name == "runs":  # a plain name: runs/runs is a new directory, the siblings are untouched
        assert code == 0
    else:
        assert code == 2 and "name" in err and "plain name" in err
    assert {k: v for k, v in _files(tmp_path / "runs").items() if k.parts[0] != "runs"} == sibling
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@needs_data()
def test_overwrite_is_a_clean_start_even_for_an_unfinished_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--output", out, *FAST, "train.seed=1")[0] == 0
    assert not json.loads((out / "metrics.json").read_text())["finished"]  # train alone leaves it open
    old_base = (out / "base" / "model.safetensors").read_bytes()
    old_adapter = (out / "adapter" / "model.safetensors").read_bytes()
    (out / "checkpoints" / "stale-marker").write_text("x")
    assert run_cli(capsys, "train", "--output", out, "--overwrite", *FAST, "train.seed=2")[0] == 0
    assert (out / "base" / "model.safetensors").read_bytes() != old_base  # the new config's base, not the old one
    assert (out / "adapter" / "model.safetensors").read_bytes() != old_adapter
    assert not (out / "checkpoints" / "stale-marker").exists()
    assert "seed: 2" in (out / "config.yaml").read_text()
    assert (out / MARKER).exists()


HOLD = """
import sys, time
from jsquad_lora.config.load import load_config
from jsquad_lora.recipe.rundir import run_directory
with run_directory(load_config("tiny-cpu"), sys.argv[1], resume=True, overwrite=False):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_second_process_is_refused_and_a_killed_holder_releases_the_lock(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        code, err = run_cli(capsys, "run", "--output", out, *FAST)
        assert code == 2 and "another jsquad-lora process is using this run directory" in err
        assert f'"pid": {holder.pid}' in err  # the holder is named
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the OS released the lock with the killed process: the directory can be used again
    with run_directory(load_config("tiny-cpu"), str(out), resume=True, overwrite=False) as run_dir:
        assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()


@needs_data()
def test_a_failed_start_leaves_nothing_behind_and_the_fixed_command_runs(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": []}]}]}', "utf-8")
    out, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for target in (out, empty):
        code, err = run_cli(capsys, "run", "--output", target, *FAST, f"data.dir={bad}")
        assert code == 2 and str(bad) in err
    assert not out.exists() and list(empty.iterdir()) == []
    # the same output with the corrected data: not refused as "a different config"
    assert run_cli(capsys, "train", "--output", out, *FAST)[0] == 0


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with run_directory(load_config("tiny-cpu"), str(tmp_path / "run"), resume=False, overwrite=False) as run_dir:
            pass
    finally:
        os.umask(old)
    assert (run_dir / "config.yaml").stat().st_mode & 0o777 == 0o640
    assert (run_dir / MARKER).stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.eval_limit=-1", "data.eval_limit"),
        ("data.eval_limit=0", "data.eval_limit"),
        ("train.epochs=0", "train.epochs"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio"),
        ("train.seed=-3", "train.seed"),
        ("train.seed=99999999999", "train.seed"),
        ("train.logging_steps=0", "train.logging_steps"),
        ("train.save_steps=-1", "train.save_steps"),
        ("lora.r=0", "lora.r"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.optim=adamw_turbo", "train.optim"),
        ("model.tiny_heads=3", "model.tiny_hidden"),
        ("eval.max_new_tokens=900", "eval.max_new_tokens"),
        ("train.learning_rate=nan", "train.learning_rate"),
        ("train.epochs=inf", "train.epochs"),
    ],
)
def test_out_of_range_values_fail_at_load_before_any_work(tmp_path, capsys, override, key):
    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", "--output", out, *FAST, override)
    assert code == 2 and key in err, err
    if override.split("=")[0] == key:  # the error names the override, not the preset file
        assert f"override {override}" in err, err
    assert not out.exists()  # refused before a run directory (or any model work) existed


@needs_data()
@pytest.mark.parametrize("content", ['{"finished": fal', "[1, 2]"])
def test_a_corrupt_metrics_file_is_a_clear_error(tmp_path, capsys, content):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--output", out, *FAST)[0] == 0
    (out / "metrics.json").write_text(content, "utf-8")
    code, err = run_cli(capsys, "evaluate", "--output", out, *FAST)
    assert code == 2 and "metrics.json" in err and "--overwrite" not in err  # no hint to throw the run away
    assert "move metrics.json aside" in err
    (out / "metrics.json").unlink()  # as the hint says: the run resumes, keeping its adapter
    adapter = _files(out / "adapter")
    assert run_cli(capsys, "evaluate", "--output", out, *FAST)[0] == 0
    assert _files(out / "adapter") == adapter and json.loads((out / "metrics.json").read_text())["after"]


@needs_data()
def test_model_files_respect_the_umask_too(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert run_cli(capsys, "train", "--output", tmp_path / "run", *FAST)[0] == 0
    finally:
        os.umask(old)
    for name in ("base/model.safetensors", "adapter/model.safetensors", "adapter/tokenizer.json", "config.yaml"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name


LAST_STAGE = [a for a in FAST if a != "eval.side_check=false"]  # every artefact a run can write


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", "--output", str(out), *LAST_STAGE]) == 0
    assert not missing_artefacts(out, load_config("tiny-cpu", LAST_STAGE[2:]))
    return out


@needs_data()
@pytest.mark.parametrize(
    "lost", ["report.md", "report.html", "scores.png", "side_check.json", "predictions-after.jsonl", "adapter"]
)
def test_a_finished_run_missing_an_artefact_resumes_it(tmp_path, capsys, finished_run, lost):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = (out / "predictions-before.jsonl").read_bytes()
    shutil.rmtree(out / lost) if (out / lost).is_dir() else (out / lost).unlink()
    assert json.loads((out / "metrics.json").read_text())["finished"]  # as a kill in the last stage left it
    code, err = run_cli(capsys, "run", "--output", out, *LAST_STAGE)
    assert code == 0, err
    assert not missing_artefacts(out, load_config("tiny-cpu", LAST_STAGE[2:]))
    assert json.loads((out / "metrics.json").read_text())["finished"]
    assert (out / "predictions-before.jsonl").read_bytes() == before  # the finished stages were not redone
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    for again in (["run", "--output", out], ["run", "--resume", "--output", out]):  # now it is complete: kept
        code, err = run_cli(capsys, *again, *LAST_STAGE)
        assert code == 0 and "nothing to do" in err, err
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name != ".lock"} == kept
    hint = err[err.index("nothing to do") :]
    assert "jsquad-lora report" in hint and "jsquad-lora export" in hint and "--output" in hint
    assert "--overwrite deletes" in hint  # only as the way to start again, saying what it costs


@needs_data()
def test_a_finished_run_of_another_config_is_refused_and_kept(tmp_path, capsys, finished_run):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    code, err = run_cli(capsys, "run", "--output", out, *LAST_STAGE, "train.learning_rate=0.002")
    assert code == 2 and "finished run of a different config" in err and "jsquad-lora report" in err
    assert json.loads((out / "metrics.json").read_text())["finished"] and not missing_artefacts(
        out, load_config("tiny-cpu", LAST_STAGE[2:])
    )


@needs_data()
def test_a_kill_while_the_run_finishes_leaves_it_resumable(tmp_path):
    from test_resume import cli, kill_when

    out = tmp_path / "run"
    argv = ["run", "--output", out, *LAST_STAGE]
    env_ready = lambda: (out / "report.md").exists()  # noqa: E731 (the last stage has begun)
    assert kill_when(argv, env_ready), "the run ended before it could be killed"
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = load_config("tiny-cpu", LAST_STAGE[2:])
    assert not metrics["finished"] or not missing_artefacts(out, cfg)  # "finished" only once all is written
    result = subprocess.run(cli(*argv), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    if metrics["finished"]:  # the kill came after the last write: the finished run is kept as it is
        assert "nothing to do" in result.stderr
    assert not missing_artefacts(out, cfg) and json.loads((out / "metrics.json").read_text())["finished"]


@needs_data()
def test_a_full_disk_while_training_is_a_clear_error_and_the_run_resumes(small_disk, capsys):
    disk = small_disk(640)  # the tiny base model and a checkpoint fit, not two
    out = disk / "run"
    argv = ["train", "--output", out, *FAST, "lora.enabled=true", "train.save_steps=1", "train.epochs=4"]
    code, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in err, err
    assert "no space left on the device while writing a training checkpoint or the adapter" in err, err
    assert "MiB free" in err and "run the same command again" in err
    checkpoints = list((out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints  # the first fitted: the run resumes from it
    for checkpoint in checkpoints:  # none half-written that resume could take
        json.loads((checkpoint / "trainer_state.json").read_text())
    assert not (out / "adapter").exists() and not list(out.glob(".*.tmp"))
    disk.resize(64 * 1024)
    code, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert (out / "adapter").is_dir()
    steps = [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert steps[-1] == 4, (out / "loss.jsonl").read_text()  # trained to the end


def test_a_run_from_before_a_new_config_key_is_the_same_config(tmp_path):
    """An unfinished run whose config.yaml predates a key (added since, at its default) still resumes; a changed
    value, or a key this version does not know, is another config."""
    from jsquad_lora.config.load import config_to_yaml, load_config
    from jsquad_lora.recipe.rundir import _same_config

    cfg = load_config("tiny-cpu", [])
    text = config_to_yaml(cfg)
    assert "  window_tokens: null\n" in text
    previous = tmp_path / "config.yaml"
    previous.write_text(text.replace("  window_tokens: null\n", ""), encoding="utf-8")
    assert _same_config(previous, cfg)
    assert "  window_overlap: null\n" in text  # derived when the run starts, and written then
    previous.write_text(text.replace("window_overlap: null", "window_overlap: 64"), encoding="utf-8")
    assert _same_config(previous, cfg)  # the value the run derived matches the key left unset
    assert not _same_config(previous, load_config("tiny-cpu", ["model.window_overlap=32"]))
    previous.write_text(text.replace("  epochs: 4.0\n", "  epochs: 3.0\n"), encoding="utf-8")
    assert not _same_config(previous, cfg)
    previous.write_text(text.replace("  window_tokens: null\n", "  window_size: 3\n"), encoding="utf-8")
    assert not _same_config(previous, cfg)
