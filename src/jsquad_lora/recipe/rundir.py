"""The run directory: where a run's files live, created or resumed, never clobbered by accident.

Rules, so that no user file is ever lost:
- Every directory this tool creates for a run holds a marker file (`.jsquad-lora-run`), written
  first. The tool resumes into, or deletes the contents of, only such directories; a non-empty
  directory without the marker is refused, whatever the flags.
- One process per run directory: an OS file lock (`.lock`, `fcntl.flock`) is held for the whole
  job and released by the OS on any exit; a second process gets an error naming the holder.
- `--overwrite` is a clean start: everything in the (marked) directory goes, finished or not.
- "Finished" means every artefact is written: metrics.json says `"finished": true` only after the
  last of them (`finish` writes it last), and a run marked finished that lacks any of
  `run_artefacts` is resumed, not refused: the stages that wrote the missing files run again.
  A finished run asked for again (the same command, or `--resume`) has nothing to do: it says so and
  exits 0, writing only a missing report file (`finished_run`).
- A start that fails before any work (bad data, a prompt that cannot fit) leaves no new directory.

Its layout is listed in run.py's docstring; every file in it is written atomically (files.py).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from jsquad_lora.config.load import config_to_yaml
from jsquad_lora.config.schema import RunConfig
from jsquad_lora.errors import InputError
from jsquad_lora.util.files import holds_marker, write_text

log = logging.getLogger(__name__)
MARKER = ".jsquad-lora-run"
LOCK = ".lock"
STARTED = ".started"
#: a damaged metrics.json: the run resumes without it (its stages find their saved predictions and adapter)
METRICS_FIX = (
    "move metrics.json aside (or repair it) and run the same command again: the run resumes, re-scoring its "
    "saved predictions and keeping its adapter"
)


@contextmanager
def run_directory(cfg: RunConfig, output: str | None, *, resume: bool, overwrite: bool) -> Iterator[Path]:
    """The run directory, locked for the block: created (with its marker and config.yaml), resumed,
    or cleaned for a fresh start (`overwrite`). A directory this call created is removed again if
    the block fails with an InputError before `mark_started` (nothing was done in it)."""
    run_dir = run_dir_path(cfg, output)
    made, fresh = _create(run_dir)
    try:
        with _locked(run_dir):
            _prepare(run_dir, cfg, resume=resume, overwrite=overwrite, fresh=fresh)
            yield run_dir
    except InputError:
        if fresh and not (run_dir / STARTED).exists():  # only this start's own files are in it
            if made:
                shutil.rmtree(run_dir)
            else:
                _empty(run_dir, keep=())
        raise


def run_dir_path(cfg: RunConfig, output: str | None) -> Path:
    """`--output`, or runs/<config name> (runs/<the file's model> for a model.gguf_file of another model)."""
    from jsquad_lora.model.source import run_name_for

    return Path(output) if output else Path("runs") / run_name_for(cfg)


def mark_started(run_dir: Path) -> None:
    """Work begins in `run_dir`: from now on a failure keeps the directory for `--resume`."""
    write_text(run_dir / STARTED, "")


def _create(run_dir: Path) -> tuple[bool, bool]:
    """Make `run_dir` if needed and mark it: (this call made the directory, it was new or empty)."""
    fix = (
        "choose a new or empty --output; if it is a run of an earlier version of this tool, "
        f"create the marker: touch {run_dir / MARKER}"
    )
    if holds_marker(run_dir, MARKER, what="a run directory of jsquad-lora", fix=fix):
        return False, False
    made = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / MARKER, "a run directory of jsquad-lora: `--overwrite` may empty it\n")
    except OSError as err:
        raise InputError(
            run_dir, f"cannot create the run directory ({err.strerror or err})", fix="choose a writable --output"
        ) from None
    return made, True


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """An exclusive OS lock on `run_dir` for the block (released by the OS on any exit, even a kill)."""
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise InputError(
            path, f"cannot open the lock file ({err.strerror or err})", fix="choose a writable --output"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
        os.close(fd)
        raise InputError(
            run_dir,
            f"another jsquad-lora process is using this run directory ({holder})",
            fix="wait for it to finish, stop it, or choose another --output",
        ) from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    holder["command"] = " ".join(sys.argv)[:500]
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder, ensure_ascii=False).encode(), 0)
    try:
        yield
    finally:
        os.close(fd)


#: what a finished run offers instead of running again (`--overwrite` only as the way to start over)
FINISHED_HINT = (
    "see its results with `jsquad-lora report {run_dir}`, export it with `jsquad-lora export {run_dir} --output DIR`, "
    "or start another run with --output NEW_DIR; to start this one again from nothing, --overwrite deletes its "
    "results first"
)
#: the report's files: a finished run lacking only these writes them and has nothing else to do
REPORT_FILES = ("report.md", "report.html", "scores.png")


def finished_run(run_dir: Path, cfg: RunConfig) -> list[str] | None:
    """None unless `run_dir` holds a finished run of `cfg` that lacks nothing but report files; then the
    report files it lacks (the caller writes them and stops: nothing to do)."""
    if not _finished(run_dir / "metrics.json"):
        return None
    missing = missing_artefacts(run_dir, cfg)
    return missing if set(missing) <= set(REPORT_FILES) else None


def _prepare(run_dir: Path, cfg: RunConfig, *, resume: bool, overwrite: bool, fresh: bool) -> None:
    finished = False
    if overwrite:
        _empty(run_dir)
    elif _finished(run_dir / "metrics.json"):
        finished = True
        missing = [name for name in missing_artefacts(run_dir, cfg) if name not in REPORT_FILES]
        if missing:
            finished = False
            log.warning(
                "%s is marked finished but lacks %s: resuming the stages that write them", run_dir, ", ".join(missing)
            )
    elif not fresh and not resume and (run_dir / "config.yaml").exists():
        log.warning("%s holds an unfinished run: resuming it (same as --resume)", run_dir)
    previous = run_dir / "config.yaml"
    if previous.exists() and not _same_config(previous, cfg):
        if finished:
            raise InputError(
                run_dir,
                "this directory holds a finished run of a different config",
                fix=FINISHED_HINT.format(run_dir=run_dir),
            )
        raise InputError(
            run_dir,
            "an unfinished run with a different config is here",
            fix="resume it with the config and overrides it was started with (its config.yaml), or choose another "
            "--output (--overwrite deletes its work and starts again)",
        )
    if finished:
        return  # its config.yaml stays as the run wrote it (with its derived values)
    write_text(previous, config_to_yaml(with_stored_overlap(cfg, previous)))  # a resumed run keeps its overlap


def with_stored_overlap(cfg: RunConfig, config_yaml: Path) -> RunConfig:
    """`cfg`, where it leaves model.window_overlap unset, with the value a run's config.yaml holds (derived when
    the run started); else `cfg` itself."""
    import yaml

    if cfg.model.window_overlap is not None:
        return cfg
    try:
        value = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))["model"]["window_overlap"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return cfg
    if not isinstance(value, int) or isinstance(value, bool):
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, window_overlap=value))


def _same_config(previous: Path, cfg: RunConfig) -> bool:
    """Whether the run's config.yaml is `cfg`: the same text, or the same config once read with this version's
    defaults (a key added since, at its default, does not make a run another one). A derived value the run wrote
    (model.window_overlap) matches the key left unset."""
    wanted = config_to_yaml(with_stored_overlap(cfg, previous))
    if previous.read_text(encoding="utf-8") == wanted:
        return True
    from jsquad_lora.config.load import load_config

    try:
        return config_to_yaml(load_config(previous, [])) == wanted
    except InputError:  # a key this version no longer has, or a value it refuses: another config
        return False


def run_artefacts(cfg: RunConfig) -> list[str]:
    """What a finished `run` directory holds, by the config's stages (every one is written atomically)."""
    names = ["config.yaml", "metrics.json"]
    names += ["eval_ids.json"] * bool(cfg.data.eval_sample)
    names += ["predictions-before.jsonl"] * cfg.eval.before
    names += ["adapter/"]
    names += ["predictions-after.jsonl"] * cfg.eval.after
    names += ["side_check.json"] * cfg.eval.side_check
    return names + ["report.md", "report.html", "scores.png"]


def missing_artefacts(run_dir: Path, cfg: RunConfig) -> list[str]:
    """The artefacts of `run_artefacts` absent from `run_dir` (adapter/: not a complete trained model)."""
    from jsquad_lora.tuned.loaded import ADAPTER_FILES

    missing = []
    for name in run_artefacts(cfg):
        if name == "adapter/":
            adapter = run_dir / "adapter"
            weights = ADAPTER_FILES[bool(cfg.lora.enabled)]
            if (adapter / "model.safetensors.index.json").is_file():
                weights = tuple(w for w in weights if w != "model.safetensors")
            if not all((adapter / w).is_file() for w in weights):
                missing.append(name)
        elif not (run_dir / name).is_file():
            missing.append(name)
    return missing


def _finished(metrics: Path) -> bool:
    try:
        data = json.loads(metrics.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        raise InputError(metrics, "unreadable or not JSON", fix=METRICS_FIX) from None
    return isinstance(data, dict) and data.get("finished") is True


def _empty(run_dir: Path, keep: tuple[str, ...] = (MARKER, LOCK)) -> None:
    """Remove everything in a marked run directory but `keep` (by default its marker and lock, held)."""
    for entry in run_dir.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
