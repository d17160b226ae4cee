"""The one JSON / JSONL reader: a user's JSON read safely, and every JSONL file the tool reads.

json.loads accepts what a user's file should not hold silently: a key repeated in one object (json keeps
the last), nesting deeper than the recursion limit, lone surrogates. Every read here refuses those with an
InputError naming the file, the line or JSON path, and the fix. JSONL lines end at "\n" only (JSON strings
may hold U+2028 and other characters `str.splitlines` splits on). Four readings of JSONL, one line splitter:
`read_jsonl` (strict, or skipping bad lines), `read_jsonl_checked` (a user's file: duplicate keys and deep
nesting refused line by line), `read_jsonl_objects` (a run's optional extras: whatever is readable) and
`read_jsonl_prefix` (an append-only log on resume: its torn tail truncated).
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Literal

from jsquad_lora.errors import InputError, shown  # noqa: F401 (shown: read from here too)

log = logging.getLogger(__name__)


def _jsonl_lines(raw: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line with its "\n") for every line of `raw`. Lines end at "\n"
    only: JSON strings may hold U+2028, U+0085 and other characters `str.splitlines` splits on."""
    offset = 3 if raw.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte order mark
    number = 0
    while offset < len(raw):
        end = raw.find(b"\n", offset)
        end = len(raw) if end < 0 else end + 1
        number += 1
        yield number, offset, raw[offset:end]
        offset = end


def _parse_line(line: bytes) -> Any:
    """The JSON value of one line; ValueError if it is not UTF-8 JSON."""
    return json.loads(line.decode("utf-8"))


def read_jsonl(path: Path | str, *, on_bad_line: Literal["raise", "skip"] = "raise") -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSONL file, in order.

    A line that is not JSON: "raise" an InputError naming the file and the line; "skip" it (for
    optional extras such as a report's loss curve)."""
    path = Path(path)
    rows = []
    for number, _, line in _jsonl_lines(path.read_bytes()):
        if not line.strip():
            continue
        try:
            rows.append((number, _parse_line(line)))
        except ValueError as err:
            if on_bad_line == "skip":
                continue
            if isinstance(err, json.JSONDecodeError):
                problem = err.msg
            else:
                problem = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err)
            raise InputError(
                path,
                f"invalid JSON on this line: {problem}",
                where=f"line {number}",
                fix="each line of a JSONL file must be one complete JSON object; remove or repair this line",
            ) from None
    return rows


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
    for _, offset, line in _jsonl_lines(raw):
        if not line.endswith(b"\n"):
            break
        if line.strip():
            try:
                rows.append(_parse_line(line))
            except ValueError:
                break
        good_bytes = offset + len(line)
    if good_bytes != len(raw):
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return rows


def json_type_name(kind: type) -> str:
    """A Python type as its JSON name with an article: str → "a string"."""
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
        bool: "a boolean",
    }
    return names.get(kind, f"a {kind.__name__}")


#: a UTF-16 surrogate code point: JSON can smuggle one in as a "\\ud800" escape, and no encoder takes it
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> str | None:
    """None when `text` is valid Unicode text; else a description of its first lone surrogate."""
    match = _SURROGATE.search(text)
    if match is None:
        return None
    return f"a lone surrogate \\u{ord(match.group()):04x} at character {match.start()}"


def check_text(value: str, path: Path | str, where: str, what: str) -> str:
    """Refuse a string holding a lone surrogate (a "\\ud800" escape without its pair): it is not text,
    and it would crash a later stage (tokenizer, MeCab, writing UTF-8) far from its cause."""
    found = lone_surrogate(value)
    if found is not None:
        raise InputError(
            path,
            f"{what} holds {found}, which is not a character",
            where=where,
            fix="replace the escape by the character it stands for "
            "(a \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one, forming one character)",
        )
    return value


class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: a dict, or _DuplicateKey when a key repeats (json.loads would keep the last)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


def _find_duplicate_key(text: str) -> tuple[str, int, int] | None:
    """(key, offset of its first and of its second occurrence) for the first JSON object (in the order
    json completes them, innermost first) with a repeated key. Pure-Python parse: only called after the
    fast parse found a duplicate."""
    found: list[tuple[str, int, int]] = []
    ws = json.decoder.WHITESPACE.match

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None, _w=ws, _ws=None):
        s, start = s_and_end
        pairs, end = json.decoder.JSONObject(s_and_end, strict, scan_once, object_hook, list, memo)
        if len({k for k, _ in pairs}) == len(pairs):
            return pairs, end
        seen: dict[str, int] = {}
        p = start
        while True:  # walk the members again, now knowing where each key starts
            p = ws(s, p).end()
            key_at = p
            key, p = json.decoder.scanstring(s, p + 1, strict)
            if key in seen:
                found.append((key, seen[key], key_at))
                raise _DuplicateKey
            seen[key] = key_at
            p = ws(s, ws(s, p).end() + 1).end()  # past ":"
            _, p = scan_once(s, p)
            p = ws(s, p).end() + 1  # past ","

    decoder = json.JSONDecoder(object_pairs_hook=list)
    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        decoder.decode(text)
    except (_DuplicateKey, ValueError, RecursionError):
        pass
    return found[0] if found else None


def _line_column(text: str, offset: int, first_line: int = 1) -> str:
    line = text.count("\n", 0, offset) + first_line
    column = offset - text.rfind("\n", 0, offset)
    return f"line {line}, column {column}"


def parse_json_text(text: str, path: Path | str, what: str = "file", first_line: int = 1) -> Any:
    """json.loads, refusing what it would let through silently (a key repeated in one object: json keeps
    the last) or crash on (nesting deeper than the recursion limit); every failure is one InputError.
    `first_line`: the line number of the text's first line in its file (for one line of a JSONL file)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as err:
        raise InputError(
            path,
            f"invalid JSON: {err.msg}",
            where=f"line {err.lineno + first_line - 1}, column {err.colno}",
            fix="repair the JSON (e.g. check quotes and commas near that position)",
        ) from None
    except _DuplicateKey:
        found = _find_duplicate_key(text)
        if found is None:  # the slow locating parse gave up (nesting too deep for it)
            problem, where = "a key is repeated in one JSON object", None
        else:
            key, first, second = found
            problem = (
                f"duplicate key {shown(key)!r} in one JSON object (first at {_line_column(text, first, first_line)})"
            )
            where = _line_column(text, second, first_line)
        raise InputError(
            path,
            problem + ": JSON readers disagree on which value counts, so this tool refuses to guess",
            where=where,
            fix="keep one entry per key: remove or rename the repeated one",
        ) from None
    except ValueError as err:  # json's own limits, e.g. an integer of more than 4300 digits
        raise InputError(
            path,
            f"unreadable JSON value ({str(err).splitlines()[0].split(';')[0]})",
            fix=f"a {what} holds numbers of ordinary size; check that this is the file you meant to pass",
        ) from None
    except RecursionError:
        raise InputError(
            path,
            f"nested too deeply: the {what}'s arrays/objects nest beyond what the JSON reader can follow",
            fix=f"a {what} is only a few levels deep; check that this is the file you meant to pass",
        ) from None


def read_json_file(path: Path, what: str = "file") -> Any:
    """Read a UTF-8 JSON file; every failure becomes one InputError naming the file and the spot."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            path, f"{what} not found", fix="check the path (relative paths are taken from the current directory)"
        )
    if path.is_dir():
        raise InputError(path, f"expected a {what}, got a directory", fix="pass the JSON file inside it")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(
            path, f"cannot read the {what} ({err.strerror or err})", fix="check the file's permissions"
        ) from None
    if not raw.strip():
        raise InputError(path, "the file is empty", fix=f"pass a non-empty JSON {what}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            path, f"not UTF-8 text (bad byte at offset {err.start})", fix="re-save the file as UTF-8"
        ) from None
    return parse_json_text(text, path, what)


def first_line_is_a_value(path: Path) -> bool:
    """Whether the first non-blank line of `path` is a complete JSON value on its own: true of JSONL,
    false of a pretty-printed JSON document (its first line is "{" or "[")."""
    for line in path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        if line.strip():
            try:
                json.loads(line.decode("utf-8"))
            except RecursionError:
                return True  # a value, too deep: the JSONL reader names its line
            except ValueError:
                return False
            return True
    return False


def read_jsonl_checked(path: Path, what: str = "predictions file") -> list[tuple[str, object]]:
    """("line N", value) for each line of a user's JSONL file (a predictions file). A first pass refuses, line by line,
    what json.loads lets through or cannot follow: a key repeated in one object (json keeps the last),
    nesting deeper than the recursion limit, a number too long to read; read_jsonl then reports lines
    that are not JSON at all."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            continue  # read_jsonl names it
        try:
            parse_json_text(text, path, what, first_line=number)
        except InputError as err:
            if err.problem.startswith("invalid JSON"):
                continue  # read_jsonl names it
            raise InputError(path, err.problem, where=err.where or f"line {number}", fix=err.fix) from None
    try:
        return [(f"line {n}", row) for n, row in read_jsonl(path)]
    except RecursionError:  # not reached: the pass above names the line
        raise InputError(path, "nested too deeply", fix=f"a {what} is only a few levels deep") from None


def read_jsonl_objects(path: Path) -> list[dict]:
    """Valid object lines of a JSONL file; a torn or foreign line is skipped, not fatal,
    because these files are optional extras of the report (a file that cannot be read at all is
    left out with a warning)."""
    if not path.is_file():
        return []
    try:
        rows = [row for _, row in read_jsonl(path, on_bad_line="skip")]
    except RecursionError:  # a line nested too deeply for json: skip that line as any other bad one
        rows = []
        for line in path.read_bytes().split(b"\n"):
            try:
                rows.append(json.loads(line.decode("utf-8-sig")))
            except (ValueError, RecursionError):
                continue
    except OSError as err:
        log.warning("%s: cannot be read (%s); left out of the report", path, err.strerror or err)
        return []
    return [row for row in rows if isinstance(row, dict)]
