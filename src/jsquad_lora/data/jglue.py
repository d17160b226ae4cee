"""Where a JSQuAD split's file is: a file, a directory of JGLUE's file names, or `jglue:VERSION` (JGLUE's
files downloaded once into the cache; offline, an error naming the files to fetch and where to put them)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

from jsquad_lora.data.question import SPLIT_NAMES
from jsquad_lora.errors import InputError
from jsquad_lora.util.cache import cache_dir
from jsquad_lora.util.files import write_bytes

JGLUE_URL = "https://raw.githubusercontent.com/yahoojapan/JGLUE/{ref}/datasets/jsquad-{version}/{split}-{version}.json"
#: v1.1 (62,859 train questions): the version of the reference experiment (SPEC §1); v1.3: the current one
JGLUE_SPLITS = {"v1.1": ("train", "valid"), "v1.3": ("train", "valid", "test")}
#: where each version's files are, tried in order: JGLUE's release tag, then the main branch
JGLUE_REFS = {"v1.1": ("v1.1.0", "main"), "v1.3": ("main",)}


def jglue_cache(version: str) -> Path:
    """Where `jglue:VERSION`'s files are downloaded to (and read from, offline)."""
    return cache_dir() / "jglue" / version


def download_jglue(version: str) -> Path:
    """Download JGLUE's JSQuAD files for `version` into the cache (once) and return the directory."""
    if version not in JGLUE_SPLITS:
        raise InputError(
            f"jglue:{version}", f"unknown JGLUE version (known: {', '.join(JGLUE_SPLITS)})", fix="use jglue:v1.3"
        )
    target = jglue_cache(version)
    for split in JGLUE_SPLITS[version]:
        out = target / f"{split}-{version}.json"
        if out.exists():
            continue
        for ref in JGLUE_REFS[version]:
            url = JGLUE_URL.format(ref=ref, version=version, split=split)
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    write_bytes(out, response.read())
                break
            except urllib.error.HTTPError as err:
                if err.code == 404 and ref != JGLUE_REFS[version][-1]:
                    continue  # not at this ref: the next one
                _download_failed(version, url, err)
            except (urllib.error.URLError, OSError) as err:
                _download_failed(version, url, err)
    return target


def _download_failed(version: str, url: str, err: Exception) -> NoReturn:
    raise InputError(
        f"jglue:{version}",
        f"could not download {url} ({err})",
        fix=f"without a network, download the JSQuAD {version} files (train-{version}.json, valid-{version}.json) "
        f"from https://github.com/yahoojapan/JGLUE (datasets/jsquad-{version}) elsewhere, put them in one "
        "directory and set data.dir (or JSQUAD_DIR) to that directory",
    ) from None


def resolve_split(source: str | os.PathLike | None, split: str) -> Path:
    """Find the JSON file of `split` ("train", "valid" or "test", or a file name) given a source.

    source: a JSON file (used as is), a directory holding JGLUE's file names (`valid-v1.3.json`...),
    `jglue:v1.3` (downloaded into a cache), or None for the `JSQUAD_DIR` environment variable.
    """
    if source is None or str(source) == "":
        source = os.environ.get("JSQUAD_DIR")
        if not source:
            raise InputError(
                "JSQUAD_DIR",
                "no data directory given",
                fix="set JSQUAD_DIR to a directory with the JSQuAD files (e.g. ../shared/jsquad), pass data.dir=..., "
                "or use jglue:v1.3",
            )
    text = str(source)
    directory = download_jglue(text.split(":", 1)[1]) if text.startswith("jglue:") else Path(text)
    if directory.is_file():
        return directory
    if not directory.is_dir():
        raise InputError(directory, "data file or directory not found", fix="check the path, or set JSQUAD_DIR")
    if split.endswith(".json"):
        candidate = directory / split
        if candidate.is_file():
            return candidate
        raise InputError(
            candidate,
            "data file not found",
            fix=f"files in {directory}: {', '.join(sorted(p.name for p in directory.glob('*.json'))) or 'none'}",
        )
    if split not in SPLIT_NAMES:
        raise InputError(
            split,
            f"unknown split name (known: {', '.join(SPLIT_NAMES)})",
            fix="use train, valid or test, or a file name",
        )
    # JGLUE names files <split>-v<major>.<minor>.json; prefer the newest version present.
    matches = sorted(directory.glob(f"{split}-v*.json"), key=lambda p: _version_key(p.stem.split("-v", 1)[1]))
    if not matches:
        present = ", ".join(sorted(p.name for p in directory.glob("*.json"))) or "no JSON files"
        raise InputError(
            directory,
            f"no {split}-v*.json file here (found: {present})",
            fix=f"download JGLUE's {split} file into it, or point the {split} split at another file "
            "(e.g. data.train_split=test offline, where the train split is not available)",
        )
    return matches[-1]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))
