"""Atomic file output: a file we write is either absent, the old version, or complete.

Every artefact of a run goes through these functions (temporary file in the same directory,
fsync, then os.replace), so a run killed at any moment never leaves a half-written file.
The one exception is the append-only predictions log, which is written line by line with
`append_jsonl_lines` and repaired on resume by `read_jsonl_prefix`.

A full disk (`out_of_space`) is an InputError naming what was being written, the space left and
the fix: the writers below it (safetensors, torch.save, the Trainer) report it in their own ways.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from jsquad_lora.errors import InputError


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the errors of a write that found no room: the disk full, a quota reached, a file size limit
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: how writers that do not raise OSError say it (safetensors' Rust error)
NO_SPACE_TEXT = ("No space left on device", "os error 28", "StorageFull", "Disk quota exceeded")
#: what torch.save's writer says of any failed write: taken for a full disk only when the disk is nearly full
WRITE_FAILED_TEXT = ("file write failed", "iostream error", "unexpected pos", "PytorchStreamWriter")
NEARLY_FULL_BYTES = 64 * 2**20


def _is_out_of_space(err: BaseException, where: Path) -> bool:
    seen, write_failed = set(), False
    while err is not None and id(err) not in seen and not isinstance(err, InputError):  # that one says it all
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            return True
        if any(text in str(err) for text in NO_SPACE_TEXT):
            return True
        write_failed |= any(text in str(err) for text in WRITE_FAILED_TEXT)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return write_failed and disk_space(where)[0] < NEARLY_FULL_BYTES


def _mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


def disk_space(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


@contextmanager
def out_of_space(
    what: str, where: Path | str, *, fix: str, needed: int | Callable[[], int | None] | None = None
) -> Iterator[None]:
    """Run the block; a write in it that finds the disk full becomes an InputError: `what` was being
    written under `where`, the space left (and `needed` bytes, when known: a function is asked then),
    and `fix`. Other errors pass."""
    try:
        yield
    except Exception as err:
        if not _is_out_of_space(err, Path(where)):
            raise
        free, total = disk_space(Path(where))
        room = f"{_mib(free)} free of {_mib(total)} on its file system"
        if callable(needed):
            needed = needed()
        if needed:
            room += f"; about {_mib(needed)} is needed"
        raise InputError(where, f"no space left on the device while writing {what} ({room})", fix=fix) from None


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the mode open() would
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
    # a symlink (to a directory, or dangling) stays: what it points at is what gets written
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700: give the directory the mode mkdir would
    old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old")
    try:
        yield tmp
        _give_umask_modes(tmp)
        if path.exists():  # moved aside, not deleted, until the new directory is in its place
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def _give_umask_modes(root: Path) -> None:
    """Files and directories under `root` get the modes open()/mkdir() would give them: some writers
    (transformers' safetensors saving, mkstemp) make them 0600."""
    mask = _umask()
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def holds_marker(directory: Path, marker: str, *, what: str, fix: str) -> bool:
    """Whether `directory` is one this tool wrote (it holds `marker`); False when it is missing or empty.
    A file, or a non-empty directory without the marker, is an InputError: the tool never writes
    into, or deletes from, a folder it did not make (`fix` says what to choose instead)."""
    if directory.exists() and not directory.is_dir():
        raise InputError(directory, "exists and is not a directory", fix="choose a new or empty directory instead")
    if not directory.is_dir() or not any(directory.iterdir()):
        return False
    if not (directory / marker).is_file():
        raise InputError(
            directory,
            f"this directory is not empty and is not {what} (no {marker} file): nothing in it was touched",
            fix=fix,
        )
    return True


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
