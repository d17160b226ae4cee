"""JSQuAD (SQuAD v1.1 JSON) loading with validation, title stripping and the JGLUE download cache.

Hand-written because no library validates SQuAD files with errors a user can act on: every
problem names the file, the record (question id or JSON path) and the fix.
"""

from __future__ import annotations

import os
import statistics
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .errors import InputError
from .files import write_bytes
from .jsonio import check_text, json_type_name, read_json_file

TITLE_SEPARATOR = " [SEP] "
JGLUE_URL = "https://raw.githubusercontent.com/yahoojapan/JGLUE/{ref}/datasets/jsquad-{version}/{split}-{version}.json"
#: v1.1 (62,859 train questions): the version of the reference experiment (SPEC §1); v1.3: the current one
JGLUE_SPLITS = {"v1.1": ("train", "valid"), "v1.3": ("train", "valid", "test")}
#: where each version's files are, tried in order: JGLUE's release tag, then the main branch
JGLUE_REFS = {"v1.1": ("v1.1.0", "main"), "v1.3": ("main",)}
SPLIT_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class Question:
    """One JSQuAD question. `context` is the passage body, without the `<title> [SEP] ` prefix;
    `answer_starts` are character offsets into that body (as given, shifted by the prefix)."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


@dataclass(frozen=True)
class Split:
    path: Path
    questions: tuple[Question, ...]
    #: "qid#k" for each gold answer whose answer_start does not point at its text
    start_mismatches: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.questions)

    def by_id(self) -> dict[str, Question]:
        return {q.id: q for q in self.questions}


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
                        f"duplicate question id {qid!r} (first at {seen[qid]})",
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
                answers = _expect(qa.get("answers"), list, path, f"{where_q}.answers", '"answers"')
                if not answers:
                    raise InputError(
                        path,
                        "no gold answers (unanswerable SQuAD-v2 questions are not supported)",
                        where=f"{where_q}.answers",
                        fix='give at least one answer {"text", "answer_start"}',
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


def cache_dir() -> Path:
    """This tool's cache: $JSQUAD_LORA_CACHE, else $XDG_CACHE_HOME/jsquad-lora or ~/.cache/jsquad-lora."""
    root = os.environ.get("JSQUAD_LORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "jsquad-lora"
    )
    return Path(root)


def download_jglue(version: str) -> Path:
    """Download JGLUE's JSQuAD files for `version` into the cache (once) and return the directory."""
    if version not in JGLUE_SPLITS:
        raise InputError(
            f"jglue:{version}", f"unknown JGLUE version (known: {', '.join(JGLUE_SPLITS)})", fix="use jglue:v1.3"
        )
    target = cache_dir() / "jglue" / version
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


def _percentiles(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    return {
        "min": ordered[0],
        "p50": cuts[49],
        "p90": cuts[89],
        "p99": cuts[98],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 2),
    }


def split_stats(split: Split) -> dict[str, Any]:
    """Counts and character-length percentiles of a split (answers: the first gold answer)."""
    qs = split.questions
    return {
        "file": str(split.path),
        "questions": len(qs),
        "paragraphs": len({(q.title, q.context) for q in qs}),
        "articles": len({q.title for q in qs}),
        "gold_answers": sum(len(q.answers) for q in qs),
        "context_chars": _percentiles([len(q.context) for q in qs]),
        "question_chars": _percentiles([len(q.question) for q in qs]),
        "answer_chars": _percentiles([len(q.answers[0]) for q in qs]),
        "answer_start_mismatches": len(split.start_mismatches),
        "answer_start_mismatch_examples": list(split.start_mismatches[:10]),
    }
