"""Atomic file output: a file we write is either absent, the old version, or complete.

Every artefact of a run goes through these functions (temporary file in the same directory,
fsync, then os.replace), so a run killed at any moment never leaves a half-written file.
The one exception is the append-only predictions log, which is written line by line with
`append_jsonl_lines` and repaired on resume by `read_jsonl_prefix`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it becomes `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path: Path | str, rows: Iterable[Any]) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl_lines(path: Path | str, rows: Iterable[Any]) -> None:
    """Append complete lines in one write call, then fsync.

    A kill can still cut the last write short; `read_jsonl_prefix` drops such a torn tail.
    """
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    if not data:
        return
    with open(path, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl_prefix(path: Path | str) -> list[dict]:
    """Read the complete, valid lines of an append-only JSONL log and truncate any torn tail.

    Used on resume: after this call the file holds exactly the returned rows.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    rows: list[dict] = []
    good_bytes = 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
        rows.append(row)
        good_bytes += len(line)
    if good_bytes != len(raw):
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return rows
