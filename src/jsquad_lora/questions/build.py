"""`jsquad-lora data generate DOCS --output OUT.json`: a checked question set from documents.

Flow: documents (data/documents.py) → passages of at most one window (the generator's tokenizer measures them)
→ the leak check against the evaluation data (refused with exit 2 before any work) → per passage, answer
candidates (MeCab, or the generator's own) → questions (generators.py) → the checks on every pair
(data/qa_checks.py) → the round-trip filter (roundtrip.py) → SQuAD JSON whose every question carries its
provenance, and a summary beside it (OUT.summary.json).

Resumable like evaluation: each passage's outcome is appended to a log (`OUT.log.jsonl`, one per rank under
torchrun, which shards the passages) as it is done; the same command again skips the logged passages, and the
output is written (atomically) from the logs once every passage is in them.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from jsquad_lora.data.candidates import Candidate, mecab_candidates
from jsquad_lora.data.documents import Passage, cut_passages, read_documents
from jsquad_lora.data.qa_checks import REJECT_REASONS, check_pair, eval_passage_leaks
from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError
from jsquad_lora.questions.generators import ENDPOINT_PASSAGE_CHARS, Proposal
from jsquad_lora.util import distributed
from jsquad_lora.util.files import append_jsonl_lines, write_json
from jsquad_lora.util.jsonio import read_jsonl_prefix

log = logging.getLogger(__name__)
#: passages generated for at a time (one batch of the generator, one round-trip batch, then their log lines)
GROUP = 16
#: MeCab candidates drawn from: the first CANDIDATE_POOL × N by priority (dates, numbers, proper nouns first)
CANDIDATE_POOL = 3


@dataclass(frozen=True)
class Settings:
    """What a log was written with: resuming with other settings would mix two question sets."""

    docs: str
    generator: str
    candidates: str
    filter: str | None
    min_f1: float | None
    per_passage: int
    seed: int
    max_passage_tokens: int


def choose_candidates(passage: Passage, n: int, seed: int) -> list[Candidate]:
    """N of the passage's MeCab candidates: a seeded draw from the first CANDIDATE_POOL × N by priority, in
    passage order (the same passage and seed give the same candidates on every machine)."""
    pool = mecab_candidates(passage.text, limit=CANDIDATE_POOL * n)
    chosen = random.Random(f"{seed}:{passage.id}").sample(pool, min(n, len(pool)))
    return sorted(chosen, key=lambda c: c.start)


def evaluation_questions(exclude: Sequence[str]) -> tuple[list[Question], list[str]]:
    """The questions whose passages must not be generated on: the dev data `run` evaluates on by default
    (data.dir, or $JSQUAD_DIR), where it can be found, and every `exclude` source; and the sources' names."""
    from jsquad_lora.config.load import load_config
    from jsquad_lora.data.formats import read_split
    from jsquad_lora.data.select import read_data

    questions, names = [], []
    try:
        split = read_data(load_config(None, []), "eval", download=False)
        questions += split.questions
        names.append(str(split.path))
    except InputError as err:
        log.warning("no default evaluation data to check against (%s); pass --exclude SRC to name it", err.problem)
    for source in exclude:
        split = read_split(source, "valid")
        questions += split.questions
        names.append(source)
    return questions, names


def refuse_leaks(passages: Sequence[Passage], eval_questions: Sequence[Question], names: Sequence[str]) -> None:
    leaks = eval_passage_leaks(passages, eval_questions)
    if leaks:
        shown = "; ".join(f"{p.id} and evaluation question {qid}'s passage" for p, qid in leaks[:3])
        raise InputError(
            "DOCS",
            f"passages of DOCS hold the text of evaluation passages ({shown}): questions generated on them would "
            f"leak the evaluation data ({', '.join(names)}) into training",
            fix="leave those documents out of DOCS (or evaluate on other data)",
        )


def generate_questions(
    docs: str,
    output: Path,
    *,
    generator,
    candidates: str = "mecab",
    filter_run=None,
    per_passage: int = 3,
    exclude: Sequence[str] = (),
    seed: int = 0,
    columns: dict[str, str] | None = None,
    encoding: str | None = None,
    include_source_questions: bool = False,
) -> dict[str, Any]:
    """Generate, check and filter questions on DOCS' passages; write OUT (SQuAD JSON) and OUT.summary.json.
    Returns the summary."""
    from tqdm import tqdm

    documents, source_questions = read_documents(docs, columns=columns, encoding=encoding)
    # one window of the generator run, else of the QA filter run (the model the questions will train), else
    # a character count (an endpoint alone)
    measure = next((m for m in (generator, filter_run) if m is not None and m.passage_tokens()), None)
    max_tokens = measure.passage_tokens() if measure else ENDPOINT_PASSAGE_CHARS
    passages = cut_passages(documents, max_tokens, measure.count_tokens if measure else len)
    if not passages:
        raise InputError(docs, "holds no text to generate questions on", fix="pass documents with text")
    refuse_leaks(passages, *evaluation_questions(exclude))
    settings = Settings(
        str(docs), generator.name, candidates, getattr(filter_run, "name", None),
        getattr(filter_run, "min_f1", None), per_passage, seed, max_tokens,
    )  # fmt: skip
    if generator.name.startswith("endpoint:"):
        log.warning("the passages of DOCS are sent to %s (model %s)", generator.url, generator.model)
    rank, world = distributed.rank(), distributed.world_size()
    log_path = _log_path(output, rank, world)
    done = _resume(log_path, settings)
    mine = [p for p in passages[rank::world] if p.id not in done]
    log.info(
        "%d documents, %d passages (at most %d tokens each); %d already done, %d to generate on",
        len(documents), len(passages), max_tokens, len(passages[rank::world]) - len(mine), len(mine),
    )  # fmt: skip
    started = time.perf_counter()
    with tqdm(total=len(mine), desc="generating questions", unit="passage", disable=not distributed.is_main()) as bar:
        for i in range(0, len(mine), GROUP):
            group = mine[i : i + GROUP]
            append_jsonl_lines(log_path, _generate_group(group, generator, candidates, filter_run, per_passage, seed))
            bar.update(len(group))
    seconds = time.perf_counter() - started
    distributed.barrier()
    if not distributed.is_main():
        return {}
    rows = [row for r in range(world) for row in read_jsonl_prefix(_log_path(output, r, world))[1:]]
    extra = list(source_questions) if include_source_questions else []
    return _write(output, passages, rows, settings, seconds, extra)


def _log_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(output.name + (".log.jsonl" if world == 1 else f".log-{rank}.jsonl"))


def _resume(log_path: Path, settings: Settings) -> set[str]:
    """The passages a log already holds (none for a new log, which gets its settings line)."""
    rows = read_jsonl_prefix(log_path) if log_path.exists() else []
    if not rows:
        append_jsonl_lines(log_path, [{"settings": asdict(settings)}])
        return set()
    if rows[0].get("settings") != asdict(settings):
        raise InputError(
            log_path,
            "holds the progress of a generation with other settings",
            fix=f"run it again with the settings its first line holds, or delete {log_path} to start over",
        )
    return {row["passage"] for row in rows[1:]}


def _generate_group(group: Sequence[Passage], generator, mode: str, filter_run, per_passage: int, seed: int):
    """One log line per passage: its kept pairs, its rejects by reason, its candidate count."""
    chosen = [choose_candidates(p, per_passage, seed) for p in group] if mode == "mecab" else None
    proposed = generator.propose(group, chosen, per_passage)
    lines, survivors = [], []
    for k, (passage, (proposals, refused)) in enumerate(zip(group, proposed)):
        rejected: Counter[str] = Counter([refused] if refused else [])  # the passage's request: not_json, ...
        kept: list[dict] = []
        for proposal in proposals:
            start, reason = check_pair(
                passage.text, proposal.question, proposal.answer, proposal.hint, [x["question"] for x in kept]
            )
            if reason:
                rejected[reason] += 1
                continue
            kept.append(_pair(proposal, start))
            survivors.append((k, kept[-1]))
        candidates = len(chosen[k]) if chosen is not None else len(proposals)
        lines.append({"passage": passage.id, "candidates": candidates, "proposed": len(proposals),
                      "kept": kept, "rejected": dict(rejected)})  # fmt: skip
    if filter_run is not None and survivors:
        questions = [
            Question("rt", "", group[k].text, pair["question"], (pair["answer"],), (pair["answer_start"],))
            for k, pair in survivors
        ]
        for (k, pair), result in zip(survivors, filter_run.answers(questions)):
            pair["round_trip"] = {"answer": result.answer, "em": result.em, "f1": round(result.f1, 4)}
            if not filter_run.keeps(result):  # kept in the log as "filtered", for a reader to judge the filter
                lines[k]["kept"].remove(pair)
                lines[k].setdefault("filtered", []).append(pair)
                lines[k]["rejected"]["round_trip"] = lines[k]["rejected"].get("round_trip", 0) + 1
    return lines


def _pair(proposal: Proposal, start: int) -> dict:
    return {"question": proposal.question.strip(), "answer": proposal.answer.strip(), "answer_start": start,
            "kind": proposal.kind}  # fmt: skip


def _write(output: Path, passages, rows: list[dict], settings: Settings, seconds: float, extra) -> dict[str, Any]:
    from jsquad_lora.data.write import squad_json

    by_id = {p.id: p for p in passages}
    questions, provenance = [], {}
    rejected: Counter[str] = Counter()
    for row in rows:
        passage = by_id.get(row["passage"])
        rejected.update(row["rejected"])
        if passage is None:  # a log line of a passage no longer in DOCS: not this set's
            continue
        for k, pair in enumerate(row["kept"]):
            qid = f"{passage.id}#q{k}"
            title = passage.title or passage.document
            questions.append(Question(qid, title, passage.text, pair["question"], (pair["answer"],),
                                      (pair["answer_start"],)))  # fmt: skip
            provenance[qid] = {
                "generator": settings.generator, "candidates": settings.candidates, "kind": pair["kind"],
                "round_trip": pair.get("round_trip"), "filter": settings.filter, "seed": settings.seed,
                "document": passage.document, "passage_start": passage.start,
            }  # fmt: skip
    for q in extra:
        provenance[q.id] = {"generator": "source", "document": q.title}
    questions += list(extra)
    proposed = sum(r["proposed"] for r in rows)
    summary = {
        "output": str(output),
        "settings": asdict(settings),
        "passages": len(passages),
        "candidates": sum(r["candidates"] for r in rows),
        "proposed": proposed,
        "kept": sum(len(r["kept"]) for r in rows),
        "rejected": {reason: rejected.get(reason, 0) for reason in REJECT_REASONS},
        "source_questions": len(extra),
        "seconds_this_try": round(seconds, 1),
        "proposed_per_second_this_try": round(proposed / seconds, 3) if seconds and proposed else None,
    }
    write_json(output.with_name(output.name + ".summary.json"), summary)
    log.info(
        "%d passages, %d candidates, %d questions proposed, %d kept; rejected: %s",
        summary["passages"], summary["candidates"], proposed, summary["kept"],
        ", ".join(f"{k} {v}" for k, v in summary["rejected"].items()),
    )  # fmt: skip
    if not questions:
        raise InputError(
            settings.docs,
            f"no question passed the checks (rejected: {', '.join(f'{k} {v}' for k, v in rejected.items())})",
            fix=f"see {output.name}.summary.json; try another generator, model or --candidates",
        )
    data = squad_json(questions, source=settings.docs)
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qa["provenance"] = provenance[qa["id"]]
    write_json(output, data)
    log.info("wrote %s and %s", output, output.name + ".summary.json")
    return summary
