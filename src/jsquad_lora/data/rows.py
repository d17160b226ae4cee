"""Flat QA rows (a table's dicts) into checked questions: the row schemas a user's data comes in.

    HF flat SQuAD   id, title, context, question, answers {text: [...], answer_start: [...]}
    simple          context, question, answer (+ optional id, document or title): the tool finds
                    answer_start; an answer that occurs several times is kept as one gold text at its
                    first occurrence (`spans.find_answer`), and counted (`Split.ambiguous_answers`, shown by `stats`)

`columns` maps these names to the table's own (`{"context": "本文", "question": "質問", "answer": "回答"}`).
Hand-written because no library checks QA rows with errors a user can act on: each names the file,
the row (its number and id) and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from jsquad_lora.data.jsquad import strip_title
from jsquad_lora.data.question import Question, Split
from jsquad_lora.data.spans import find_answer
from jsquad_lora.errors import InputError, brief
from jsquad_lora.util.jsonio import lone_surrogate

#: the names a column mapping may map (document and title are the same thing: the passage's document)
COLUMN_NAMES = ("context", "question", "answer", "answers", "id", "document", "title")


#: the roles another column can fill: an answers column is an answer; a title column is the document
ALTERNATIVES = {"answer": ("answers",), "answers": ("answer",), "document": ("title",), "title": ("document",)}


def _mapped(columns: Mapping[str, str] | None, present: Sequence[str], source: str) -> dict[str, str]:
    """Our column name → the table's, for the names the table has. A mapped column that is not in the table
    is an error, unless the table fills that role under our own names (one data.columns then serves both a
    config's CSV with Japanese headers and its parquet in HF's schema)."""
    columns = dict(columns or {})
    if unknown := [k for k in columns if k not in COLUMN_NAMES]:
        raise InputError(
            "--columns", f"unknown column role {brief(unknown[0])}", fix=f"map any of: {', '.join(COLUMN_NAMES)}"
        )
    for ours, theirs in list(columns.items()):
        if theirs in present:
            continue
        if any(name in present for name in (ours, *ALTERNATIVES.get(ours, ()))):
            del columns[ours]
            continue
        raise InputError(
            source,
            f"the column {brief(theirs)} (mapped to {ours}) is not in it",
            fix=f"its columns are: {', '.join(map(str, present))}",
        )
    found = {name: name for name in COLUMN_NAMES if name in present and name not in columns.values()}
    return found | columns


def schema_of(names: Mapping[str, str], present: Sequence[str], source: str) -> str:
    """ "flat" (answers lists), "simple" (one answer text), or an error naming what is missing."""
    missing = [n for n in ("context", "question") if n not in names]
    if "answers" not in names and "answer" not in names:
        missing.append("answer")
    if missing:
        raise InputError(
            source,
            f"no {' / '.join(missing)} column (its columns: {', '.join(map(str, present))})",
            fix="name the columns context, question and answer (or answers {text, answer_start}), or map yours: "
            "--columns context=本文,question=質問,answer=回答 (data.columns in a config)",
        )
    return "flat" if "answers" in names else "simple"  # given both, the answers with their offsets


#: the roles whose cell may be a number in a typed file (parquet, JSON): its text is the value
NUMBER_AS_TEXT = ("id", "answer", "document")
#: the roles whose cell may be empty: the row is numbered, is a document of its own, or has no answer in its
#: passage (an unanswerable question)
MAY_BE_EMPTY = ("id", "document", "answer")


def _text(value: Any, row: Callable[[], str], source: str, column: str, name: str) -> str:
    """The cell of role `name` (a COLUMN_NAMES entry) in column `column`, checked as text."""
    if value is None or (isinstance(value, float) and value != value):  # a missing cell (NaN in pandas)
        value = ""
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and name in NUMBER_AS_TEXT:
            value = str(value)
        else:
            raise InputError(source, f"{column} must be text, got {type(value).__name__}", where=row())
    if name not in MAY_BE_EMPTY and not value.strip():
        raise InputError(source, f"the {column} column is empty", where=row(), fix="fill it in or remove the row")
    if found := lone_surrogate(value):
        raise InputError(source, f"{column} holds {found}, which is not a character", where=row())
    return value


def _flat_answers(value: Any, context: str, row: Callable[[], str], source: str, column: str) -> tuple[list, list]:
    """HF's answers {text: [...], answer_start: [...]} (or a list of {text, answer_start})."""
    if isinstance(value, list):
        value = {"text": [a.get("text") for a in value], "answer_start": [a.get("answer_start") for a in value]}
    texts, starts = (value or {}).get("text"), (value or {}).get("answer_start")
    shape = f"{column} must be {{text: [...], answer_start: [...]}} of one length"
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise InputError(source, shape, where=row(), fix="as the Hugging Face squad datasets write it")
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text.strip():
            raise InputError(source, f"an answer text in {column} is empty or not text", where=row())
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start < len(context):
            raise InputError(
                source,
                f"answer_start {brief(start)} is outside the context (length {len(context)})",
                where=row(),
                fix="answer_start counts characters from the start of the context",
            )
    return texts, starts


def rows_to_split(
    rows: Sequence[Mapping[str, Any]],
    source: str,
    *,
    columns: Mapping[str, str] | None = None,
    row_name: Callable[[int], str] = lambda i: f"row {i + 1}",
    id_prefix: str = "row",
) -> Split:
    """Checked questions from rows of the flat or simple schema (`columns` maps the names)."""
    if not rows:
        raise InputError(source, "it holds no rows", fix="pass a file with a header and at least one row")
    present = list(rows[0].keys())
    names = _mapped(columns, present, source)
    schema = schema_of(names, present, source)
    document = names.get("document") or names.get("title")
    questions, mismatches, ambiguous, seen = [], [], [], {}
    for i, record in enumerate(rows):
        qid = None

        def where() -> str:
            return row_name(i) + (f" (id {qid})" if qid else "")

        if "id" in names:
            qid = _text(record.get(names["id"]), where, source, names["id"], "id").strip() or None
        qid = qid or f"{id_prefix}{i + 1}"
        if qid in seen:
            raise InputError(
                source,
                f"duplicate id {brief(qid)} (first in {seen[qid]})",
                where=where(),
                fix="ids must be unique: rename one, or drop the id column to number the rows",
            )
        seen[qid] = row_name(i)
        context = _text(record.get(names["context"]), where, source, names["context"], "context")
        question = _text(record.get(names["question"]), where, source, names["question"], "question")
        title = _text(record.get(document), where, source, document, "document") if document else ""
        if schema == "flat":  # offsets into the context as given; JSQuAD's `<title> [SEP] ` prefix is cut off
            texts, starts = _flat_answers(record.get(names["answers"]), context, where, source, names["answers"])
            mismatches += [f"{qid}#{k}" for k, (t, s) in enumerate(zip(texts, starts)) if context[s : s + len(t)] != t]
            context, offset = strip_title(context, title or None)
            starts = [s - offset for s in starts]
        else:
            answer = _text(record.get(names["answer"]), where, source, names["answer"], "answer").strip()
            start, repeated = find_answer(context, answer) if answer else (0, False)
            if not answer:  # an empty answer cell: the passage does not answer the question
                texts, starts = [], []
            elif start < 0:
                raise InputError(
                    source,
                    f"the answer {brief(answer)} does not occur in its context",
                    where=where(),
                    fix="an answer must be copied from its context exactly (the same characters and spaces)",
                )
            else:
                if repeated:
                    ambiguous.append(qid)
                texts, starts = [answer], [start]
        questions.append(Question(qid, title, context, question, tuple(texts), tuple(starts)))
    return Split(Path(source), tuple(questions), tuple(mismatches), tuple(ambiguous))
