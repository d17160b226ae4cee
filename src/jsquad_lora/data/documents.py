"""A user's documents read for question generation, and cut into passages that keep their offsets.

    a folder         its .txt / .md files, one document each (UTF-8; sorted; id = the path inside the folder;
                     title = a .md file's first heading, else the file's stem)
    a table          .jsonl / .csv / .tsv / .parquet / .arrow / a .json list of rows with a text column
                     (`text`, `context` or `document`, or mapped: columns={"text": "本文"}), optional id, title
    a QA source      anything `read_split` reads whose rows hold questions (SQuAD JSON, flat rows, a JGLUE
                     directory, SRC:SPLIT, ...): each distinct passage is a document, in its article's order;
                     its questions come back too (the caller leaves them out unless asked for)

A table is a table of documents or a QA source by whether its rows have a question column.
`cut_passages` cuts a document at paragraph boundaries into passages of at most a window of tokens.
Hand-written: no library cuts text at paragraphs by a tokenizer's count and keeps the character offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from jsquad_lora.data.formats import _row_namer, read_split, split_source
from jsquad_lora.data.question import Question
from jsquad_lora.data.tables import is_saved_dataset, read_table_file
from jsquad_lora.errors import InputError, brief
from jsquad_lora.registry import DATA_FORMATS
from jsquad_lora.util.jsonio import lone_surrogate

#: the files of a folder of documents
DOCUMENT_SUFFIXES = (".txt", ".md")
#: a table's text column when `columns` maps none, tried in order
TEXT_COLUMNS = ("text", "context", "document")
#: the roles a column mapping may name (the QA roles too: one data.columns serves both kinds of source)
DOCUMENT_ROLES = ("text", "id", "title", "context", "document", "question", "answer", "answers")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_JGLUE_FILE = re.compile(r"^(train|valid|test)-v[0-9.]+\.json$")


@dataclass(frozen=True)
class Document:
    """One document: `source` says where it came from (a file, a table's row), for error messages."""

    id: str
    title: str
    text: str
    source: str


@dataclass(frozen=True)
class Passage:
    """A piece of a document of at most one window: `text == document.text[start:start + len(text)]`;
    `index` counts the document's passages from 0."""

    document: str
    title: str
    text: str
    start: int
    index: int

    @property
    def id(self) -> str:
        return f"{self.document}#p{self.index}"


# --- reading ------------------------------------------------------------------------------------------


def read_documents(
    src: str,
    *,
    columns: Mapping[str, str] | None = None,
    encoding: str | None = None,
    split: str = "train",
) -> tuple[list[Document], list[Question]]:
    """The documents of `src` (a folder, a table of documents or a QA source; module docstring) and, for a QA
    source, its questions (else []). `split` is a QA source's split when `src` names none (SRC:SPLIT)."""
    text = str(src)
    if not text.strip():
        raise InputError("DOCS", "no documents named", fix="pass a folder of .txt/.md files, a table or a QA source")
    head, inner = split_source(text)
    path = Path(head)
    if inner is None and path.is_dir() and not is_saved_dataset(path) and not _is_jglue_dir(path):
        return _read_folder(path, encoding), []
    if inner is None and path.is_file() and DATA_FORMATS["table"].claims(head):
        rows = read_table_file(path, encoding)
        if rows and not _has_questions(rows[0], columns):
            return _table_documents(rows, str(path), columns, _row_namer(path.suffix.lower())), []
    if inner is None and not path.exists() and not head.startswith(("hf:", "jglue:")):
        raise InputError(text, "documents not found", fix="pass a folder of .txt/.md files, a table or a QA source")
    questions = list(read_split(text, split, columns=_qa_columns(columns), encoding=encoding).questions)
    return _passage_documents(questions, text), questions


def _is_jglue_dir(path: Path) -> bool:
    return any(_JGLUE_FILE.match(p.name) for p in path.glob("*.json"))


def _has_questions(row: Mapping[str, Any], columns: Mapping[str, str] | None) -> bool:
    return (columns or {}).get("question", "question") in row or "question" in row


def _qa_columns(columns: Mapping[str, str] | None) -> dict[str, str] | None:
    """The QA roles of a mapping (a documents-only role such as `text` means nothing to a QA reader)."""
    if columns is None:
        return None
    qa = {k: v for k, v in columns.items() if k not in ("text",)}
    if "text" in columns and "context" not in qa:
        qa["context"] = columns["text"]
    return qa


def _read_folder(folder: Path, encoding: str | None) -> list[Document]:
    files = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in DOCUMENT_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if not files:
        raise InputError(
            folder, "no .txt or .md files in it", fix="put one document per .txt or .md file (UTF-8) in the folder"
        )
    return [_read_text_file(path, folder, encoding) for path in files]


def _read_text_file(path: Path, folder: Path, encoding: str | None) -> Document:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read it ({err.strerror or err})", fix="check its permissions") from None
    try:
        text = raw.decode(encoding or "utf-8-sig")  # a BOM is accepted; without one it is plain UTF-8
    except LookupError:
        raise InputError("--encoding", f"unknown encoding {brief(encoding)}", fix="e.g. utf-8, cp932") from None
    except UnicodeDecodeError as err:
        raise InputError(
            path,
            f"not {encoding or 'UTF-8'} text (byte {err.start})",
            fix="re-save it as UTF-8 (e.g. iconv -f cp932 -t utf-8), or name its encoding with --encoding cp932",
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it: offsets count characters
    if found := lone_surrogate(text):
        raise InputError(path, f"it holds {found}, which is not a character", fix="re-save it as UTF-8")
    heading = _HEADING.search(text) if path.suffix.lower() == ".md" else None
    title = heading.group(1).strip() if heading else path.stem
    return Document(path.relative_to(folder).as_posix(), title, text, str(path))


def _table_documents(
    rows: Sequence[Mapping[str, Any]], source: str, columns: Mapping[str, str] | None, row_name: Callable[[int], str]
) -> list[Document]:
    present = list(rows[0].keys())
    names = _document_columns(columns, present, source)
    documents, seen = [], {}
    for i, row in enumerate(rows):
        where = row_name(i)
        doc_id = _cell(row, names.get("id"), source, where, "id") or f"row{i + 1}"
        if doc_id in seen:
            raise InputError(
                source,
                f"duplicate id {brief(doc_id)} (first in {seen[doc_id]})",
                where=where,
                fix="ids must be unique: rename one, or drop the id column to number the rows",
            )
        seen[doc_id] = where
        text = _cell(row, names["text"], source, where, "text", strip=False)
        title = _cell(row, names.get("title"), source, where, "title") or doc_id
        documents.append(Document(doc_id, title, text, f"{source}: {where}"))
    return documents


def _document_columns(columns: Mapping[str, str] | None, present: Sequence[str], source: str) -> dict[str, str]:
    """Role (text, id, title) → the table's column, checked: a mapped column must exist."""
    columns = dict(columns or {})
    if unknown := [k for k in columns if k not in DOCUMENT_ROLES]:
        raise InputError(
            "--columns", f"unknown column role {brief(unknown[0])}", fix=f"map any of: {', '.join(DOCUMENT_ROLES)}"
        )
    listed = ", ".join(map(str, present))
    for role, theirs in columns.items():
        if theirs not in present and role in ("text", "context", "id", "title"):
            raise InputError(
                source, f"the column {brief(theirs)} (mapped to {role}) is not in it", fix=f"its columns are: {listed}"
            )
    text = columns.get("text") or columns.get("context") or next((c for c in TEXT_COLUMNS if c in present), None)
    if text is None:
        raise InputError(
            source,
            f"no text column (its columns: {listed})",
            fix="name the documents' column text, or map yours: --columns text=本文 (data.columns in a config)",
        )
    names = {"text": text}
    if (id_column := columns.get("id", "id")) in present:
        names["id"] = id_column
    title = columns.get("title") or ("title" if "title" in present else None)
    if title is None and columns.get("document") in present and columns.get("document") != text:
        title = columns["document"]
    if title is not None and title != text:
        names["title"] = title
    return names


def _cell(row: Mapping[str, Any], column: str | None, source: str, where: str, role: str, *, strip: bool = True) -> str:
    """The text of a row's `column` ('' for a missing or empty cell)."""
    if column is None:
        return ""
    value = row.get(column)
    if value is None or (isinstance(value, float) and value != value):  # a missing cell (NaN in pandas)
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and role != "text":
        value = str(value)
    if not isinstance(value, str):
        raise InputError(source, f"{column} must be text, got {type(value).__name__}", where=where)
    if found := lone_surrogate(value):
        raise InputError(source, f"{column} holds {found}, which is not a character", where=where)
    return value.strip() if strip else value


def _passage_documents(questions: Sequence[Question], source: str) -> list[Document]:
    """One document per distinct passage of a QA source, grouped by article (title) in the order they first
    occur; a passage is told apart by its text within its article. Ids: `<title>/<k>` (k counts the article's
    passages from 0), or `passage<k>` for passages without a title."""
    articles: dict[str, dict[str, str]] = {}  # title → passage text → the first question's id
    for q in questions:
        articles.setdefault(q.title, {}).setdefault(q.context, q.id)
    documents = []
    untitled = 0
    for title, passages in articles.items():
        for k, (text, first) in enumerate(passages.items()):
            if title:
                doc_id = f"{title}/{k}"
            else:
                doc_id, untitled = f"passage{untitled}", untitled + 1
            documents.append(Document(doc_id, title or doc_id, text, f"{source} (question {first})"))
    return documents


# --- passages -----------------------------------------------------------------------------------------

#: where a text is cut, coarsest first: blank lines (paragraphs), line ends, sentence ends. A sentence ends after
#: 。！？!? (and a period not inside a number), with any closing brackets or quotes that follow it
_CUTS = (
    re.compile(r"\n[^\S\n]*\n\s*"),
    re.compile(r"\n"),
    re.compile(r"(?<=[。！？!?])[」』）)”’\"']*|(?<=\.)(?![0-9])[」』）)”’\"']*"),
)


def cut_passages(documents: Sequence[Document], max_tokens: int, count_tokens: Callable[[str], int]) -> list[Passage]:
    """Every document cut into passages of at most `max_tokens` tokens (as `count_tokens` counts them):
    consecutive paragraphs joined greedily while they fit; a paragraph too long is cut at line ends, a line at
    sentence ends, a sentence at the most characters that fit (found by bisection). A passage has no whitespace
    at its edges; an empty document gives none."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    passages = []
    for document in documents:
        text = document.text
        pieces = _pieces(text, 0, len(text), 0, max_tokens, count_tokens)
        for index, (start, end) in enumerate(_joined(text, pieces, max_tokens, count_tokens)):
            passages.append(Passage(document.id, document.title, text[start:end], start, index))
    return passages


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _pieces(
    text: str, start: int, end: int, level: int, max_tokens: int, count: Callable[[str], int]
) -> list[tuple[int, int]]:
    """(start, end) spans covering text[start:end]'s non-space text in order, each of at most `max_tokens`: cut
    at `_CUTS[level]`, a piece still too long cut at the next level, and below the last at a character count."""
    start, end = _stripped(text, start, end)
    if start == end:
        return []
    if count(text[start:end]) <= max_tokens:
        return [(start, end)]
    if level == len(_CUTS):
        return _by_characters(text, start, end, max_tokens, count)
    spans, at = [], start
    for match in _CUTS[level].finditer(text, start, end):
        spans.append((at, match.end()))
        at = match.end()
    spans.append((at, end))
    if len(spans) == 1:  # no cut of this kind in it
        return _pieces(text, start, end, level + 1, max_tokens, count)
    return [piece for s, e in spans for piece in _pieces(text, s, e, level + 1, max_tokens, count)]


def _by_characters(text: str, start: int, end: int, max_tokens: int, count: Callable[[str], int]) -> list:
    """text[start:end] cut into the longest runs of characters that fit, each found by bisection."""
    pieces = []
    while start < end:
        low, high = 1, end - start  # the longest fitting length is in [low, high]; one character always goes
        while low < high:
            middle = (low + high + 1) // 2
            if count(text[start : start + middle]) <= max_tokens:
                low = middle
            else:
                high = middle - 1
        s, e = _stripped(text, start, start + low)
        if s < e:
            pieces.append((s, e))
        start += low
    return pieces


def _joined(text: str, pieces: list[tuple[int, int]], max_tokens: int, count: Callable[[str], int]) -> list:
    """Consecutive pieces joined greedily (with the text between them) while the joined span fits."""
    out: list[tuple[int, int]] = []
    for start, end in pieces:
        if out and count(text[out[-1][0] : end]) <= max_tokens:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
