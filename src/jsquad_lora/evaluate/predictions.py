"""Predictions files: a SQuAD-style JSON object {id: answer}, or the predictions JSONL a run writes (its rows'
fields beyond "id" and "prediction", `passage` among them, are the report's; reading them here ignores them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError, brief
from jsquad_lora.util.jsonio import (
    check_text,
    first_line_is_a_value,
    json_type_name,
    read_json_file,
    read_jsonl_checked,
    shown,
)

#: hex characters of a passage's key: 64 bits, no collision among any split's few thousand passages in practice
PASSAGE_KEY_CHARS = 16


def passage_key(context: str) -> str:
    """A predictions row's `passage`: the first 16 hex characters of the SHA-1 of the whole passage (UTF-8),
    the same for every question of one passage, whatever windows read it."""
    return hashlib.sha1(context.encode("utf-8", "surrogatepass")).hexdigest()[:PASSAGE_KEY_CHARS]


def load_predictions(
    path: Path | str, questions: Sequence[Question] | None = None, *, allow_unknown_ids: bool = False
) -> dict[str, str]:
    """Read predictions: a SQuAD-style JSON object {id: answer}, or this tool's JSONL
    (one object per line with "id" and "prediction"). Ids not in `questions` are an error
    unless `allow_unknown_ids`."""
    path = Path(path)
    try:
        obj = read_json_file(path, "predictions file")
        rows = None
    except InputError as err:
        if not err.problem.startswith("invalid JSON"):
            raise
        if not first_line_is_a_value(path):  # a JSON document with a syntax error, not JSONL
            raise InputError(
                path,
                err.problem,
                where=err.where,
                fix="repair the JSON near that position (check quotes and commas); the file was read as one JSON "
                "document, since its first line is not a complete JSON value (JSONL has one complete object a line)",
            ) from None
        obj, rows = None, read_jsonl_checked(path)
    if rows is None:
        if isinstance(obj, list):
            rows = [(f"item {i}", r) for i, r in enumerate(obj)]
        elif isinstance(obj, dict) and "id" in obj and "prediction" in obj:
            rows = [("line 1", obj)]  # a one-line JSONL file
    predictions: dict[str, str] = {}
    if rows is not None:
        for where, row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("id"), str) or "prediction" not in row:
                raise InputError(
                    path,
                    'each record must be an object with "id" (string) and "prediction"',
                    where=where,
                    fix='write JSONL lines like {"id": "a1p0q0", "prediction": "..."} '
                    'or a JSON object {"a1p0q0": "..."}',
                )
            if row["id"] in predictions:
                raise InputError(
                    path,
                    f"duplicate prediction for id {brief(row['id'])}",
                    where=where,
                    fix="keep one prediction per question id",
                )
            predictions[row["id"]] = row["prediction"]
    elif isinstance(obj, dict):
        predictions = obj
    else:
        raise InputError(
            path,
            f"predictions must be a JSON object {{id: answer}} or JSONL, got {json_type_name(type(obj))}",
            fix='write {"<question id>": "<answer text>", ...}',
        )
    for qid, answer in predictions.items():
        check_text(qid, path, f"id {shown(qid)}", "the id")
        if not isinstance(answer, str):
            raise InputError(
                path,
                f"the prediction must be a string, got {shown(json.dumps(answer, ensure_ascii=False)[:60])}",
                where=f"id {qid}",
                fix='use "" for a question the model did not answer',
            )
        check_text(answer, path, f"id {qid}", "the prediction")
    if questions is not None and not allow_unknown_ids:
        known = {q.id for q in questions}
        unknown = [qid for qid in predictions if qid not in known]
        if unknown:
            sample = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InputError(
                path,
                f"{len(unknown)} prediction id(s) are not questions of the data file: {sample}",
                where=f"id {unknown[0]}",
                fix="score against the data file these predictions were made for, or pass --ignore-unknown-ids",
            )
    return predictions
