"""A run directory read for the report: its metrics, loss curve and predictions (`load_run`), never an error
for an optional extra that is missing or damaged (left out with a warning)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from jsquad_lora.errors import InputError
from jsquad_lora.model.sources.tiny import TINY
from jsquad_lora.report.question_browser import STAGES, eval_questions
from jsquad_lora.util.jsonio import json_type_name, read_json_file, read_jsonl_objects

log = logging.getLogger(__name__)
EXAMPLES_PER_KIND = 5


class ReportInputError(InputError, ValueError):
    """A run directory the report cannot read (missing or broken metrics.json, no runs)."""


@dataclass
class RunSummary:
    """Everything the report needs from one run directory."""

    name: str
    path: Path
    metrics: dict[str, Any]
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    side_check: dict[str, str] | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)  # prediction rows, wrong ones first
    examples_stage: str | None = None  # "after", or "before" when the run has no after predictions
    config_text: str | None = None
    predictions: dict[str, list[dict]] = field(default_factory=dict)  # stage → prediction rows
    questions: dict[str, Any] = field(default_factory=dict)  # the evaluation split's questions by id (passages)
    questions_note: str | None = None  # why the passages are missing, when they are

    @property
    def is_tiny(self) -> bool:
        """Whether the run is on the offline tiny model (metrics.json's "model", or its base_model card, says so)."""
        return TINY in (self.metrics.get("model"), _dig(self.metrics, "base_model", "name"))

    @property
    def model_name(self) -> str:
        """The run's model as the report names it: its base_model card's name (a GGUF file's own name), else
        metrics.json's "model" (what `model.name` said), else "?"."""
        card = _dig(self.metrics, "base_model", "name")
        return card if isinstance(card, str) and card else str(self.metrics.get("model", "?"))

    @functools.cached_property
    def task(self) -> str:
        """ "question" for a question-generation run (passage + answer → question: question scores in metrics.json,
        or `task: question` in its config.yaml), else "answer" (a run without `task` is a QA run)."""
        if any(isinstance(_dig(self.metrics, stage, "question"), dict) for stage in STAGES):
            return "question"
        return "question" if _config_value(self.config_text, "task") == "question" else "answer"

    def score(self, stage: str, scorer: str, key: str) -> float | None:
        """metrics[stage][scorer][key] when it is a number, else None (stage not run)."""
        return _number(_dig(self.metrics, stage, scorer, key))

    def em_standard_error(self, stage: str) -> float | None:
        """The standard error of the stage's jglue EM (points) of a sampled evaluation, else None."""
        return _number(_dig(self.metrics, "sample", "em_standard_error", stage))


def windowed_questions(summary: Any) -> int | None:
    """How many questions (or training questions) of a metrics.json summary ("eval", "eval_before", "train")
    had a passage read in overlapping windows: "windowed_questions", or older runs' "truncated_prompts"; None
    where neither is a count."""
    for key in ("windowed_questions", "truncated_prompts"):
        value = _dig(summary, key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _config_value(text: str | None, key: str) -> Any:
    """A top-level value of a run's config.yaml text, or None (no file, not YAML, not a mapping)."""
    import yaml

    if text is None:
        return None
    try:
        raw = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, RecursionError):
        return None
    return raw.get(key) if isinstance(raw, dict) else None


def _number(value: Any) -> float | None:
    """`value` as a finite float when it is a JSON number (not a boolean), else None: a run file's
    fields are only trusted as far as their types go."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _read_optional_object(path: Path, what: str) -> dict | None:
    """An optional JSON object file of a run, or None: absent, or broken or of another type (then left
    out of the report with a warning)."""
    if not path.exists():
        return None
    try:
        value = read_json_file(path, what)
    except InputError as err:
        where = f" ({err.where})" if err.where else ""
        log.warning("%s: %s%s; left out of the report", path, err.problem, where)
        return None
    if not isinstance(value, dict):
        log.warning("%s: not a JSON object (got %s); left out of the report", path, json_type_name(type(value)))
        return None
    return value


def _read_metrics(path: Path) -> dict:
    """metrics.json, the one file a run directory must have: a JSON object, or ReportInputError."""
    fix = "re-run `jsquad-lora evaluate` on this run directory to rewrite it"
    try:
        metrics = read_json_file(path, "metrics file")
    except InputError as err:
        raise ReportInputError(err.source, err.problem, where=err.where, fix=fix) from None
    if not isinstance(metrics, dict):
        raise ReportInputError(path, f"not a JSON object (got {json_type_name(type(metrics))})", fix=fix)
    return metrics


def _pick_examples(rows: list[dict], k: int = EXAMPLES_PER_KIND) -> list[dict]:
    wrong = [r for r in rows if not _is_right(r)][:k]
    right = [r for r in rows if _is_right(r)][:k]
    return wrong + right


def _is_right(row: dict) -> bool:
    em = _number(row.get("em"))
    return em is not None and em > 0


def load_run(run_dir: Path | str) -> RunSummary:
    """Read one run directory; only metrics.json is required, every other file is optional."""
    path = Path(run_dir)
    metrics_path = path / "metrics.json"
    fix = "pass a run directory written by `jsquad-lora run` (or `evaluate`), or finish that run first"
    if not metrics_path.is_file():
        raise ReportInputError(
            metrics_path, "missing: this is not a run directory, or the run never saved scores", fix=fix
        )
    metrics = _read_metrics(metrics_path)

    loss = [
        (int(step), value)
        for r in read_jsonl_objects(path / "loss.jsonl")
        if (step := _number(r.get("step"))) is not None and (value := _number(r.get("loss"))) is not None
    ]
    side = None
    if (raw := _read_optional_object(path / "side_check.json", "side-check file")) is not None:
        side = {k: str(v) for k, v in raw.items() if v is not None}
    predictions = {stage: rows for stage in STAGES if (rows := read_jsonl_objects(path / f"predictions-{stage}.jsonl"))}
    examples, stage = [], None
    for candidate in ("after", "before"):
        if candidate in predictions:
            examples, stage = _pick_examples(predictions[candidate]), candidate
            break
    questions, note = eval_questions(path) if predictions else ({}, None)
    config = path / "config.yaml"
    config_text = None
    if config.is_file():
        try:
            config_text = config.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            log.warning("%s: cannot be read (%s); left out of the report", config, err.strerror or err)
    return RunSummary(
        path.resolve().name,
        path,
        metrics,
        sorted(loss),
        side,
        examples,
        stage,
        config_text,
        predictions,
        questions,
        note,
    )


def distinct_names(runs: Sequence[RunSummary]) -> list[RunSummary]:
    """The runs, each named by its directory's name, or where runs share that name by the shortest end of its
    path that tells it apart (a/run, b/run): the names the whole report uses. One directory given twice is a
    ReportInputError."""
    paths = [run.path.resolve() for run in runs]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            first = runs[paths.index(path)].path
            also = "" if first == runs[i].path else f" (also as {first})"
            raise ReportInputError(runs[i].path, f"this run directory is given twice{also}", fix="pass each run once")
    names = []
    for path in paths:
        others = [other.parts for other in paths if other != path]
        k = 1
        while any(other[-k:] == path.parts[-k:] for other in others):
            k += 1
        names.append(str(Path(*path.parts[-k:])))
    return [dataclasses.replace(run, name=name) for run, name in zip(runs, names)]
