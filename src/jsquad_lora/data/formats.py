"""Data formats (registered in `registry.DATA_FORMATS`): how a DATA argument or `data.dir` becomes questions.

A format resolves a source and a split name to a file (`resolve(source, split, download)`) and reads that
file into a `Split` of `Question`s, every record checked (`load(path)`). Every reader of data (the recipe,
the CLI's score / prompt / stats, the report's question browser) goes through `read_split`, so a new format
is its reader module and one `DATA_FORMATS.register` call here. JSQuAD's SQuAD-style JSON is the one
format today.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jsquad_lora.data.jglue import jglue_cache, resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.data.question import Split
from jsquad_lora.registry import DATA_FORMATS

Source = str | os.PathLike | None


@dataclass(frozen=True)
class DataFormat:
    name: str
    help: str
    #: resolve(source, split, download) -> the file holding that split; download=False: never fetch
    resolve: Callable[[Source, str, bool], Path]
    #: load(file) -> the split's questions, validated (an InputError names the file, the record, the fix)
    load: Callable[[Path], Split]


def read_split(source: Source, split: str, *, download: bool = True, format: str = "jsquad") -> Split:
    """The questions of `split` ("train", "valid", "test", or a file name) of `source`, in `format`."""
    data_format = DATA_FORMATS.get_entry(format)
    return data_format.load(data_format.resolve(source, split, download))


def _jsquad_file(source: Source, split: str, download: bool) -> Path:
    if not download and isinstance(source, str) and source.startswith("jglue:"):
        source = str(jglue_cache(source.split(":", 1)[1]))  # read from the cache only
    return resolve_split(source, split)


DATA_FORMATS.register(
    "jsquad",
    DataFormat(
        "jsquad",
        "JSQuAD (SQuAD v1.1 JSON): a file, a directory of JGLUE's file names, or jglue:v1.3 / jglue:v1.1",
        _jsquad_file,
        load_split,
    ),
)
