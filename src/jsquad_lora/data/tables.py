"""Tables of QA rows read through the `datasets` library: CSV/TSV, a JSON list of rows, JSONL, parquet,
arrow, a `datasets.save_to_disk` directory, and the hub (`hf:ID[:CONFIG][@REVISION]`).

`datasets` reads every format; written here is only what it lacks for a user's file: CSV columns read
as text (pandas would turn an id `001` into 1 and `NA` into a missing value), a UTF-8 BOM accepted,
and its parser's and pyarrow's errors turned into InputErrors that name the file, the line and the fix.
Files are read with a temporary cache that is removed afterwards: nothing is left behind.
"""

from __future__ import annotations

import csv
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from jsquad_lora.errors import InputError, brief

log = logging.getLogger(__name__)
#: file suffix → the `datasets` builder that reads it
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"}
ENCODING_FIX = (
    "re-save it as UTF-8, or name its encoding: --encoding cp932 (or data.encoding: cp932) for Shift_JIS, "
    "as Excel on Japanese Windows writes CSV"
)


def _encoding(encoding: str | None) -> str:
    import codecs

    name = encoding or "utf-8-sig"  # a BOM (Excel's UTF-8 CSV) is accepted; without one it is plain UTF-8
    try:
        codecs.lookup(name)
    except LookupError:
        raise InputError(
            "--encoding", f"unknown encoding {brief(name)}", fix="e.g. utf-8, cp932 (Shift_JIS), euc-jp"
        ) from None
    return name


def _csv_header(path: Path, sep: str, encoding: str) -> list[str]:
    """The header row of a CSV/TSV file, checked: text in `encoding`, names present and distinct."""
    try:
        with open(path, encoding=encoding, newline="") as handle:
            reader = csv.reader(handle, delimiter=sep)
            header = next(reader, None)
            rows = 0
            for row in reader:  # all of it decoded and counted now, so that the error names the line
                rows += bool(row)
                if row and len(row) != len(header):
                    raise InputError(
                        path,
                        f"line {reader.line_num} has {len(row)} fields, the header {len(header)}",
                        where=f"line {reader.line_num}",
                        fix="give every row as many fields as the header (quote a field that holds the separator)",
                    )
    except UnicodeDecodeError as err:
        raise InputError(path, f"not {encoding} text (byte {err.start} of a line)", fix=ENCODING_FIX) from None
    except csv.Error as err:
        raise InputError(path, f"not a readable CSV file ({err})", fix="check the quoting of its fields") from None
    if not header:
        raise InputError(path, "the file is empty: no header row", fix="the first line names the columns")
    if not rows:
        raise InputError(path, "it holds no rows, only a header", fix="add at least one question")
    if blank := [i + 1 for i, name in enumerate(header) if not name.strip()]:
        raise InputError(path, f"column {blank[0]} of the header has no name", fix="name every column")
    if len(set(header)) < len(header):
        twice = next(name for name in header if header.count(name) > 1)
        raise InputError(path, f"the header names column {brief(twice)} twice", fix="give every column its own name")
    return header


def _parse_error(path: Path, err: BaseException) -> InputError:
    """The InputError for what `datasets` (pandas, pyarrow) raised reading `path`."""
    while err.__cause__ is not None or err.__context__ is not None:  # the reader's own error is innermost
        err = err.__cause__ or err.__context__
    text = str(err)
    if match := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text):
        want, line, got = match.groups()
        return InputError(
            path,
            f"line {line} has {got} fields, the header {want}",
            where=f"line {line}",
            fix="give every row as many fields as the header (quote a field that holds the separator)",
        )
    if isinstance(err, UnicodeDecodeError):
        return InputError(path, "not UTF-8 text", fix=ENCODING_FIX)
    kind = path.suffix.lstrip(".") or "data"
    return InputError(
        path, f"cannot read it as {kind} ({type(err).__name__}: {text[:300]})", fix=f"check that it is a {kind} file"
    )


def read_table_file(path: Path, encoding: str | None = None) -> list[dict[str, Any]]:
    """Every row of a CSV/TSV, JSON-list, JSONL, parquet or arrow file, as dicts (CSV cells as text)."""
    import datasets

    datasets.disable_progress_bars()  # a table of a user's is read in a moment: no "Generating train split"
    builder = BUILDERS[path.suffix.lower()]
    options: dict[str, Any] = {}
    if builder == "csv":
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        encoding = _encoding(encoding)
        header = _csv_header(path, sep, encoding)
        options = {
            "sep": sep,
            "encoding": encoding,
            "keep_default_na": False,  # "NA", "null", "" stay text: an empty cell is caught as empty
            "features": datasets.Features({name: datasets.Value("string") for name in header}),
        }
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its log of a bad file repeats our error
    try:
        with tempfile.TemporaryDirectory(prefix="jsquad-lora-read-") as cache:
            table = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache, **options)
            return table.to_list()
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 (pandas, pyarrow and datasets each raise their own kinds)
        raise _parse_error(path, err) from None
    finally:
        datasets.logging.set_verbosity(verbosity)


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a directory written by `datasets.save_to_disk` (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _pick_split(splits: list[str], wanted: tuple[str, ...], source: str, only_as_default: bool) -> str:
    """The first of `wanted` (a split's names) in `splits`; or, `only_as_default`, a source's only split."""
    if chosen := next((s for s in wanted if s in splits), None):
        return chosen
    if only_as_default and len(splits) == 1:
        return splits[0]
    raise InputError(
        source,
        f"no {' / '.join(wanted)} split in it (its splits: {', '.join(splits)})",
        fix=f"name one as SOURCE:SPLIT, e.g. {source}:{splits[0]}",
    )


def read_saved(
    path: Path, wanted: tuple[str, ...], *, only_as_default: bool
) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of a `save_to_disk` directory (a DatasetDict's split named one of `wanted`), and the split."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001
        raise _parse_error(path, err) from None
    if isinstance(loaded, datasets.DatasetDict):
        split = _pick_split(list(loaded), wanted, str(path), only_as_default)
        return loaded[split].to_list(), split
    return loaded.to_list(), None


HUB_PATTERN = re.compile(r"^hf:(?P<id>[^:@]+)(?::(?P<config>[^:@]+))?(?:@(?P<revision>[^:@]+))?$")


def read_hub(spec: str, wanted: tuple[str, ...], *, only_as_default: bool) -> tuple[list[dict[str, Any]], str]:
    """The rows of a hub dataset `hf:ID[:CONFIG][@REVISION]` (its `split`), downloaded by `datasets`."""
    import datasets

    match = HUB_PATTERN.match(spec)
    if not match:
        raise InputError(spec, "not a hub dataset name", fix="write hf:OWNER/NAME[:CONFIG][@REVISION][:SPLIT]")
    name, config, revision = match["id"], match["config"], match["revision"]
    try:
        builder = datasets.load_dataset_builder(name, config, revision=revision)
        splits = list(builder.info.splits or {}) or ["train", "validation", "test"]
        split = _pick_split(splits, wanted, spec, only_as_default)
        table = datasets.load_dataset(name, config, revision=revision, split=split)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 (offline, unknown name, a script that datasets 4 no longer runs)
        script = (
            " (its loading script does not run with datasets >= 4: use hf:sbintuitions/JSQuAD, or its parquet "
            "conversion, hf:shunk031/JGLUE:JSQuAD@refs/convert/parquet)"
            if name.lower() == "shunk031/jglue" and not (revision or "").startswith("refs/convert")
            else ""
        )
        raise InputError(
            spec,
            f"cannot load it from the Hugging Face hub ({type(err).__name__}: {str(err)[:300]}){script}",
            fix=f"with a network, check the name (https://huggingface.co/datasets/{name}); offline, fetch it "
            f"elsewhere with datasets.load_dataset({name!r}{', ' + repr(config) if config else ''})"
            ".save_to_disk(DIR) and pass DIR (or its parquet files) instead",
        ) from None
    return table.to_list(), split
