"""JSQuAD (SQuAD v1.1 JSON, and SQuAD v2's questions without an answer) read into questions, with validation
and title stripping. A question with empty `answers` (or `"is_impossible": true`) has no answer in its passage.

Hand-written because no library validates SQuAD files with errors a user can act on: every
problem names the file, the record (question id or JSON path) and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsquad_lora.data.question import Question, Split
from jsquad_lora.errors import InputError, brief
from jsquad_lora.util.jsonio import check_text, json_type_name, read_json_file

TITLE_SEPARATOR = " [SEP] "


def strip_title(context: str, title: str | None) -> tuple[str, int]:
    """Return (body, offset): the context without its `<title> [SEP] ` prefix, and the prefix length.

    A context without the separator is returned whole (the reference code cut six characters
    off such contexts; we must not).
    """
    if title is not None and context.startswith(title + TITLE_SEPARATOR):
        offset = len(title) + len(TITLE_SEPARATOR)
        return context[offset:], offset
    index = context.find(TITLE_SEPARATOR)
    if index < 0:
        return context, 0
    offset = index + len(TITLE_SEPARATOR)
    return context[offset:], offset


def _expect(value: Any, kind: type | tuple[type, ...], path: Path, where: str, what: str) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        expected = " or ".join(json_type_name(k) for k in (kind if isinstance(kind, tuple) else (kind,)))
        got = "missing" if value is None else json_type_name(type(value))
        raise InputError(
            path,
            f"{what} must be {expected}, got {got}",
            where=where,
            fix="the file must follow the SQuAD v1.1 layout "
            '{"data": [{"title", "paragraphs": [{"context", "qas": '
            '[{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}',
        )
    return value


def load_split(path: Path | str) -> Split:
    """Load and validate one JSQuAD / SQuAD-v1.1 JSON file."""
    path = Path(path)
    root = read_json_file(path, "data file")
    if not isinstance(root, dict):
        raise InputError(
            path,
            f'top level must be a JSON object with a "data" list, got {json_type_name(type(root))}',
            fix='wrap the articles as {"version": "v1.1", "data": [...]}',
        )
    articles = _expect(root.get("data"), list, path, "data", '"data"')
    questions: list[Question] = []
    mismatches: list[str] = []
    seen: dict[str, str] = {}
    for a, article in enumerate(articles):
        where_a = f"data[{a}]"
        _expect(article, dict, path, where_a, "an article")
        title = article.get("title")
        if title is not None:
            check_text(_expect(title, str, path, f"{where_a}.title", '"title"'), path, f"{where_a}.title", '"title"')
        paragraphs = _expect(article.get("paragraphs"), list, path, f"{where_a}.paragraphs", '"paragraphs"')
        for p, paragraph in enumerate(paragraphs):
            where_p = f"{where_a}.paragraphs[{p}]"
            _expect(paragraph, dict, path, where_p, "a paragraph")
            full_context = _expect(paragraph.get("context"), str, path, f"{where_p}.context", '"context"')
            check_text(full_context, path, f"{where_p}.context", '"context"')
            body, offset = strip_title(full_context, title)
            qas = _expect(paragraph.get("qas"), list, path, f"{where_p}.qas", '"qas"')
            for q, qa in enumerate(qas):
                where_q = f"{where_p}.qas[{q}]"
                _expect(qa, dict, path, where_q, "a question")
                qid = check_text(
                    _expect(qa.get("id"), str, path, f"{where_q}.id", '"id"'), path, f"{where_q}.id", '"id"'
                )
                if not qid.strip():
                    raise InputError(
                        path,
                        "empty question id",
                        where=f"{where_q}.id",
                        fix="give every question a unique non-empty id",
                    )
                where_q = f"{where_q} (id {qid})"
                if qid in seen:
                    raise InputError(
                        path,
                        f"duplicate question id {brief(qid)} (first at {seen[qid]})",
                        where=where_q,
                        fix="question ids must be unique; rename or remove one of them",
                    )
                seen[qid] = where_q
                text = _expect(qa.get("question"), str, path, f"{where_q}.question", '"question"')
                check_text(text, path, f"{where_q}.question", '"question"')
                if not text.strip():
                    raise InputError(
                        path,
                        "empty question text",
                        where=f"{where_q}.question",
                        fix="remove the question or fill it in",
                    )
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise InputError(
                        path,
                        f'"is_impossible" must be true or false, got {json_type_name(type(impossible))}',
                        where=f"{where_q}.is_impossible",
                        fix="SQuAD v2 marks a question without an answer in its passage with true",
                    )
                answers = qa.get("answers", [] if impossible else None)
                answers = _expect(answers, list, path, f"{where_q}.answers", '"answers"')
                if impossible and answers:
                    raise InputError(
                        path,
                        f'"is_impossible" is true but the question has {len(answers)} gold answer(s)',
                        where=f"{where_q}.answers",
                        fix='empty its "answers" (SQuAD v2 keeps them as "plausible_answers"), '
                        'or set "is_impossible" to false',
                    )
                texts, starts = [], []
                for k, answer in enumerate(answers):
                    where_k = f"{where_q}.answers[{k}]"
                    _expect(answer, dict, path, where_k, "an answer")
                    answer_text = _expect(answer.get("text"), str, path, f"{where_k}.text", '"text"')
                    check_text(answer_text, path, f"{where_k}.text", '"text"')
                    if not answer_text.strip():
                        raise InputError(
                            path, "empty answer text", where=f"{where_k}.text", fix="fill in the answer or remove it"
                        )
                    start = _expect(answer.get("answer_start"), int, path, f"{where_k}.answer_start", '"answer_start"')
                    if not 0 <= start < len(full_context):
                        raise InputError(
                            path,
                            f"answer_start {start} is outside the context (length {len(full_context)})",
                            where=f"{where_k}.answer_start",
                            fix="answer_start counts characters from the start of the full context",
                        )
                    if full_context[start : start + len(answer_text)] != answer_text:
                        mismatches.append(f"{qid}#{k}")
                    texts.append(answer_text)
                    starts.append(start - offset)
                questions.append(Question(qid, title or "", body, text, tuple(texts), tuple(starts)))
    if not questions:
        raise InputError(path, "the file holds no questions", fix="pass a JSQuAD file with at least one question")
    return Split(path, tuple(questions), tuple(mismatches))
