"""The run directory: where a run's files live, created or resumed, never clobbered by accident.

Its layout is listed in run.py's docstring; every file in it is written atomically (files.py).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .config import RunConfig, config_to_yaml
from .errors import InputError
from .files import write_text

log = logging.getLogger(__name__)


def prepare_run_dir(cfg: RunConfig, output: str | None, *, resume: bool, overwrite: bool) -> Path:
    """Create the run directory; refuse to clobber a finished run unless `overwrite`."""
    run_dir = Path(output or Path("runs") / cfg.name)
    metrics = run_dir / "metrics.json"
    finished = metrics.exists() and json.loads(metrics.read_text(encoding="utf-8")).get("finished")
    if finished and overwrite:
        shutil.rmtree(run_dir)
    elif finished:
        raise InputError(
            run_dir,
            "this directory holds a finished run",
            fix="pass --overwrite to replace it, or --output to write somewhere else",
        )
    elif run_dir.exists() and any(run_dir.iterdir()) and not resume:
        log.warning("%s holds an unfinished run: resuming it (same as --resume)", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = run_dir / "config.yaml"
    if previous.exists() and previous.read_text(encoding="utf-8") != config_to_yaml(cfg) and not overwrite:
        raise InputError(
            run_dir,
            "an unfinished run with a different config is here",
            fix="resume with the same config and overrides, or pass --overwrite, or choose another --output",
        )
    write_text(previous, config_to_yaml(cfg))
    return run_dir
