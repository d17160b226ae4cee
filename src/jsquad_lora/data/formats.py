"""Data sources (registered in `registry.DATA_FORMATS`): how a DATA argument, `data.dir`, `data.train` or
`data.eval` becomes questions.

    a file           .json (SQuAD nested, or a JSON list of flat rows), .jsonl, .csv / .tsv, .parquet, .arrow
    a directory      JGLUE's file names (`valid-v1.3.json`, ...), or a `datasets.save_to_disk` directory
    hf:ID[:CONFIG][@REVISION]   a hub dataset (downloaded by `datasets`; offline: an error naming the fix)
    jglue:v1.3       JGLUE's JSQuAD files, downloaded into a cache
    SRC:SPLIT        a split inside a source (`mydir:valid`, `saved:validation`, `hf:sbintuitions/JSQuAD:train`)

Each format says which sources it `claims` and `read`s one into a `Split`, every record checked (an
InputError names the file, the record and the fix). Every reader of data (the recipe, the CLI, the
report's question browser) goes through `read_split`, so a new format is one registration here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from jsquad_lora.data.jglue import jglue_cache, resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.data.question import SPLIT_NAMES, Split
from jsquad_lora.data.rows import rows_to_split
from jsquad_lora.data.tables import BUILDERS, HUB_PATTERN, is_saved_dataset, read_hub, read_saved, read_table_file
from jsquad_lora.errors import InputError
from jsquad_lora.registry import DATA_FORMATS

Source = str | os.PathLike | None
#: a split name of this tool → the names datasets use for it (a DatasetDict's or a hub dataset's splits)
SPLIT_ALIASES = {"train": ("train",), "valid": ("validation", "valid", "dev", "val"), "test": ("test",)}


@dataclass(frozen=True)
class ReadOptions:
    """How to read a user's table: `columns` maps our column names to its own; `encoding` of a CSV."""

    columns: Mapping[str, str] | None = None
    encoding: str | None = None
    download: bool = True
    #: the split was named in the source (`SRC:SPLIT`): it must exist (no fallback to a source's only split)
    split_named: bool = False


@dataclass(frozen=True)
class DataFormat:
    name: str
    help: str
    #: claims(source) -> whether this format reads `source` (a path as text, or a `scheme:` name)
    claims: Callable[[str], bool]
    #: read(source, split, options) -> the split's questions, validated; `split` None: the source's own default
    read: Callable[[str, str, ReadOptions], Split]


def split_source(source: str) -> tuple[str, str | None]:
    """`SRC:SPLIT` → (SRC, SPLIT); a source that exists as a path (or has no `:SPLIT`) → (source, None)."""
    if source.startswith("hf:"):
        match = HUB_PATTERN.match(source)
        if match is None and ":" in source[3:]:  # hf:ID[:CONFIG][@REV]:SPLIT
            head, split = source.rsplit(":", 1)
            return head, split
        if match and match["config"] in _all_split_names():  # hf:ID:train names a split, not a config
            return source.replace(":" + match["config"], "", 1), match["config"]
        return source, None
    if Path(source).exists() or ":" not in source or source.startswith("jglue:") and source.count(":") == 1:
        return source, None
    head, split = source.rsplit(":", 1)
    return head, split or None


def _all_split_names() -> set[str]:
    return {name for names in SPLIT_ALIASES.values() for name in names} | set(SPLIT_ALIASES)


def read_split(
    source: Source,
    split: str,
    *,
    download: bool = True,
    columns: Mapping[str, str] | None = None,
    encoding: str | None = None,
    format: str | None = None,
) -> Split:
    """The questions of `split` ("train", "valid", "test", a file name; a `SRC:SPLIT` in `source` wins) of
    `source` (None: $JSQUAD_DIR), read by the first format that claims it (or `format`)."""
    text = "" if source is None else str(source)
    head, inner = split_source(text)
    options = ReadOptions(columns, encoding, download, split_named=inner is not None)
    if format is not None:
        data_format = DATA_FORMATS.get_entry(format)
    else:
        data_format = next((f for f in DATA_FORMATS.values() if f.claims(head)), DATA_FORMATS["jsquad"])
    return data_format.read(head, inner or split, options)


# --- JSQuAD: SQuAD v1.1 JSON files, JGLUE directories, jglue:v1.3 ------------------------------------


def _is_jsquad(source: str) -> bool:
    if source == "" or source.startswith("jglue:"):
        return True
    path = Path(source)
    if path.is_dir():
        return not is_saved_dataset(path)
    return path.suffix.lower() == ".json" and _opening(path) != "[{"  # a list of row objects is a table


def _opening(path: Path) -> str:
    """The first two non-space characters of a file ('' if it cannot be read: the reader's error says why)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096).removeprefix(b"\xef\xbb\xbf")
    except OSError:
        return ""
    return "".join(head.decode("latin-1").split())[:2]


def _read_jsquad(source: str, split: str, options: ReadOptions) -> Split:
    # options.columns is for tables: SQuAD JSON's layout is fixed (a config's data.columns maps its CSV, and its
    # evaluation split may well be JSQuAD's own file)
    if not options.download and source.startswith("jglue:"):
        source = str(jglue_cache(source.split(":", 1)[1]))  # read from the cache only
    return load_split(resolve_split(source or None, split))


# --- tables: CSV/TSV, JSON lists of rows, JSONL, parquet, arrow (through `datasets`) ------------------


def _is_table(source: str) -> bool:
    path = Path(source)
    return not path.is_dir() and path.suffix.lower() in BUILDERS and not _is_jsquad(source)


def _read_table(source: str, split: str, options: ReadOptions) -> Split:
    path = Path(source)
    if not path.is_file():
        raise InputError(path, "data file not found", fix="check the path")
    rows = read_table_file(path, options.encoding)
    return rows_to_split(rows, str(path), columns=options.columns, row_name=_row_namer(path.suffix.lower()))


def _row_namer(suffix: str) -> Callable[[int], str]:
    """How an error names row i: a CSV's first line is its header, a JSONL's lines are its rows."""
    if suffix in (".csv", ".tsv"):
        return lambda i: f"row {i + 1} (line {i + 2})"
    if suffix == ".jsonl":
        return lambda i: f"line {i + 1}"
    return lambda i: f"row {i + 1}"


# --- a datasets.save_to_disk directory, and the hub ----------------------------------------------------


def _aliases(split: str) -> tuple[str, ...]:
    return SPLIT_ALIASES.get(split, (split,))


def _read_saved(source: str, split: str, options: ReadOptions) -> Split:
    rows, chosen = read_saved(Path(source), _aliases(split), only_as_default=not options.split_named)
    shown = f"{source}:{chosen}" if chosen else source
    return rows_to_split(rows, shown, columns=options.columns)


def _read_hub(source: str, split: str, options: ReadOptions) -> Split:
    if not options.download:
        raise InputError(source, "not read without a download here", fix="run the command that downloads it")
    rows, chosen = read_hub(source, _aliases(split), only_as_default=not options.split_named)
    return rows_to_split(rows, f"{source}:{chosen}", columns=options.columns)


DATA_FORMATS.register(
    "jsquad",
    DataFormat(
        "jsquad",
        "JSQuAD (SQuAD v1.1 JSON): a file, a directory of JGLUE's file names, or jglue:v1.3 / jglue:v1.1",
        _is_jsquad,
        _read_jsquad,
    ),
)
DATA_FORMATS.register(
    "table",
    DataFormat(
        "table",
        "rows of a table: .csv, .tsv, .jsonl, a .json list, .parquet, .arrow (HF flat SQuAD or context/question/"
        "answer columns, mapped with --columns)",
        _is_table,
        _read_table,
    ),
)
DATA_FORMATS.register(
    "saved",
    DataFormat(
        "saved",
        "a datasets.save_to_disk directory (a Dataset, or a DatasetDict: DIR:SPLIT)",
        lambda source: is_saved_dataset(Path(source)),
        _read_saved,
    ),
)
DATA_FORMATS.register(
    "hub",
    DataFormat(
        "hub",
        "a Hugging Face hub dataset: hf:ID[:CONFIG][@REVISION][:SPLIT] (needs a network)",
        lambda source: source.startswith("hf:"),
        _read_hub,
    ),
)
assert set(SPLIT_NAMES) == set(SPLIT_ALIASES)
