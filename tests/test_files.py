"""Atomic writes: a failure at any point leaves the old file (or none), never a partial one."""

import json
import os

import pytest

from jsquad_lora.util import files, jsonio


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"v": 1})

    def boom(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        files.write_json(target, {"v": 2, "big": "x" * 100_000})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_exception_inside_atomic_path_leaves_nothing(tmp_path):
    target = tmp_path / "report.md"
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_atomic_dir_replaces_whole_directory(tmp_path):
    target = tmp_path / "adapter"
    with files.atomic_dir(target) as tmp:
        (tmp / "a.safetensors").write_text("1")
    with pytest.raises(RuntimeError):
        with files.atomic_dir(target) as tmp:
            (tmp / "b.safetensors").write_text("2")
            raise RuntimeError("killed")
    assert [p.name for p in target.iterdir()] == ["a.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_torn_jsonl_tail_is_dropped_and_truncated(tmp_path):
    log = tmp_path / "p.partial.jsonl"
    files.append_jsonl_lines(log, [{"id": "a", "prediction": "x"}, {"id": "b", "prediction": "y"}])
    with open(log, "ab") as handle:
        handle.write(b'{"id": "c", "predi')
    assert jsonio.read_jsonl_prefix(log) == [{"id": "a", "prediction": "x"}, {"id": "b", "prediction": "y"}]
    assert log.read_bytes().endswith(b'"y"}\n')
    files.append_jsonl_lines(log, [{"id": "c", "prediction": "z"}])
    assert [r["id"] for r in jsonio.read_jsonl_prefix(log)] == ["a", "b", "c"]
