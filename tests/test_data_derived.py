"""`jsquad-lora data build-long` and `data build-unanswerable`: evaluation sets derived from JSQuAD's dev set."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import astuple, replace

import pytest
from conftest import SHARED, needs_data

from jsquad_lora.cli import main
from jsquad_lora.data.derived import (
    MAX_CHARS,
    MIN_CHARS,
    NO_ANSWER,
    SHORT_REMAINDER,
    long_documents,
    unanswerable_mix,
)
from jsquad_lora.data.formats import read_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.data.question import Question
from jsquad_lora.data.write import squad_json, write_squad_json
from jsquad_lora.errors import InputError

VALID = SHARED / "valid-v1.3.json"
pytestmark = needs_data()


@pytest.fixture(scope="module")
def source():
    return load_split(VALID)


def build(command: str, out, *extra: str) -> str:
    """Run `data COMMAND` on the dev file into `out`; its printed summary line."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["data", command, str(VALID), "--output", str(out), *extra]) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("long") / "long.json"
    return out, build("build-long", out)


@pytest.fixture(scope="module")
def noans_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("noans") / "noans.json"
    return out, build("build-unanswerable", out)


def written_answers(path):
    """(id, full written context, answer) for every answer in a SQuAD JSON file."""
    root = json.loads(path.read_text(encoding="utf-8"))
    for article in root["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                for answer in qa["answers"]:
                    yield qa["id"], paragraph["context"], answer


# --- build-long -------------------------------------------------------------------------------------------


def test_long_documents_are_2000_to_6000_characters(long_file, source):
    out, printed = long_file
    back = load_split(out).questions
    documents = {q.context for q in back}
    assert documents and all(MIN_CHARS <= len(d) <= MAX_CHARS for d in documents)
    # the summary line: documents, kept, dropped (why), the documents' lengths
    lengths = sorted(len(d) for d in documents)
    assert f"{len(documents)} documents, {len(back)} questions kept" in printed
    assert f"{len(source) - len(back)} questions dropped" in printed and "under 2000 characters" in printed
    assert f"min {lengths[0]} /" in printed and f"max {lengths[-1]}" in printed


def test_long_documents_keep_each_question_and_its_answers(long_file, source):
    out, _ = long_file
    back = load_split(out)
    ids = [q.id for q in back.questions]
    assert len(ids) == len(set(ids))
    by_id = source.by_id()
    for question in back.questions:
        original = by_id[question.id]
        assert (question.title, question.question, question.answers) == (
            original.title,
            original.question,
            original.answers,
        )
        # its passage is in the document, whole, as one of the article's consecutive passages
        assert original.context in question.context.split("\n")
    # every offset points at its answer in the written context (the dev file has no wrong offsets)
    assert not source.start_mismatches and not back.start_mismatches
    for _, context, answer in written_answers(out):
        assert context[answer["answer_start"] :].startswith(answer["text"])


def test_long_documents_are_consecutive_passages_of_one_article(long_file, source):
    out, _ = long_file
    passages: dict[str, list[str]] = {}
    for question in source.questions:
        article = passages.setdefault(question.title, [])
        if question.context not in article:
            article.append(question.context)
    for document in {(q.title, q.context) for q in load_split(out).questions}:
        title, text = document
        parts = text.split("\n")
        first = passages[title].index(parts[0])
        assert passages[title][first : first + len(parts)] == parts


def test_long_documents_depend_on_the_seed_alone(long_file, tmp_path):
    out, _ = long_file
    again, other = tmp_path / "again.json", tmp_path / "other.json"
    build("build-long", again, "--seed", "0")
    build("build-long", other, "--seed", "1")
    assert again.read_bytes() == out.read_bytes()
    assert other.read_bytes() != out.read_bytes()


# --- build-unanswerable -----------------------------------------------------------------------------------


def test_unanswerable_mix_is_one_to_one(noans_file, source):
    out, printed = noans_file
    back = read_split(str(out), "valid").questions
    negatives = [q for q in back if q.id.endswith("#noans")]
    positives = [q for q in back if not q.id.endswith("#noans")]
    assert len(negatives) == len(positives) and negatives
    assert len({q.id for q in back}) == len(back)
    assert {q.id + "#noans" for q in positives} == {q.id for q in negatives}
    assert all(not q.answerable and q.answers == () and q.answer_starts == () for q in negatives)
    assert all(q.answerable for q in positives)
    dropped = len(source) - len(positives)
    assert f"{len(positives)} answerable, {len(negatives)} unanswerable" in printed
    assert f"{dropped} questions dropped" in printed
    # the answerable ones are the source's, unchanged
    by_id = source.by_id()
    assert all(astuple(q) == astuple(by_id[q.id]) for q in positives)


def test_each_negative_is_another_passage_of_its_article_without_the_answers(noans_file, source):
    out, _ = noans_file
    passages: dict[str, set[str]] = {}
    for question in source.questions:
        passages.setdefault(question.title, set()).add(question.context)
    by_id = source.by_id()
    for negative in read_split(str(out), "valid").questions:
        if not negative.id.endswith("#noans"):
            continue
        original = by_id[negative.id.removesuffix("#noans")]
        assert negative.question == original.question and negative.title == original.title
        assert negative.context != original.context and negative.context in passages[original.title]
        assert not any(answer in negative.context for answer in original.answers)


def test_negatives_are_written_as_squad_v2_in_their_passages_paragraph(noans_file):
    out, _ = noans_file
    root = json.loads(out.read_text(encoding="utf-8"))
    contexts = [p["context"] for a in root["data"] for p in a["paragraphs"]]
    assert len(contexts) == len(set(contexts))  # one paragraph per passage: the negatives joined their passage's
    for article in root["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa["id"].endswith("#noans"):
                    assert qa["answers"] == [] and qa["is_impossible"] is True
                else:
                    assert qa["answers"] and qa["is_impossible"] is False


def test_unanswerable_mix_depends_on_the_seed_alone(noans_file, tmp_path):
    out, _ = noans_file
    again, other = tmp_path / "again.json", tmp_path / "other.json"
    build("build-unanswerable", again)
    build("build-unanswerable", other, "--seed", "7")
    assert again.read_bytes() == out.read_bytes()
    assert other.read_bytes() != out.read_bytes()


# --- small hand-made cases --------------------------------------------------------------------------------


def article(title: str, lengths: list[int], *, answer: str = "答え") -> list[Question]:
    """An article of passages of about `lengths` characters, each with one question whose answer ends it."""
    questions = []
    for k, length in enumerate(lengths):
        context = f"{title}{k}" + "あ" * (length - len(title) - len(str(k)) - len(answer)) + answer
        start = len(context) - len(answer)
        questions.append(Question(f"{title}-{k}", title, context, f"{title}{k}の答えは?", (answer,), (start,)))
    return questions


def test_a_short_article_is_dropped_and_counted(tmp_path, capsys):
    src, out = tmp_path / "src.json", tmp_path / "out.json"
    write_squad_json(src, article("短い", [300, 400, 500]) + article("長い", [900] * 4))
    assert main(["data", "build-long", str(src), "--output", str(out)]) == 0
    line = capsys.readouterr().out
    assert "1 documents, 4 questions kept, 3 questions dropped (3 in articles under 2000 characters)" in line
    assert {q.title for q in load_split(out).questions} == {"長い"}


def test_only_short_articles_is_an_input_error(tmp_path, capsys):
    src, out = tmp_path / "src.json", tmp_path / "out.json"
    write_squad_json(src, article("短い", [300, 400, 500]))
    assert main(["data", "build-long", str(src), "--output", str(out)]) == 2
    assert "no document of 2000–6000 characters" in capsys.readouterr().err and not out.exists()


def test_a_long_passage_stands_alone_and_a_short_remainder_joins_the_document_before():
    kept, summary = long_documents(article("t", [6500, 1500, 1500, 300]), 0)
    documents = list(dict.fromkeys(q.context for q in kept))
    assert [len(d) for d in documents] == [6500, 1500 + 1 + 1500 + 1 + 300]
    assert summary["documents"] == 2 and summary["dropped"] == {} and len(kept) == 4
    # each offset moved by its passage's offset in the document
    assert [q.answer_starts[0] for q in kept[1:]] == [1498, 1501 + 1498, 3002 + 298]


def test_a_short_run_before_a_long_passage_is_dropped_and_so_are_questions_without_answers():
    long = replace(article("t", [5000], answer="別")[0], id="t-1")  # answered by 別, the other by 答え
    questions = article("t", [1500]) + [long, Question("n", "t", "い" * 100, "?", (), ())]
    kept, summary = long_documents(questions, 0)
    assert [q.id for q in kept] == ["t-1"] and len(kept[0].context) == 5000
    assert summary["dropped"] == {SHORT_REMAINDER: 1, NO_ANSWER: 1}
    mixed, summary = unanswerable_mix(questions, 0)
    assert [q.id for q in mixed] == ["t-0", "t-1#noans", "t-1", "t-0#noans"]
    assert summary["dropped"] == {NO_ANSWER: 1}


def test_an_answer_pointing_at_the_title_stays_there():
    # JSQuAD's answers that are the title point into "<title> [SEP] ": a negative offset into the body
    prefix = len("t" + " [SEP] ")
    questions = [Question("q", "t", "x" * 1200, "?", ("t",), (-prefix,))] + article("t", [1200])
    moved, summary = long_documents(questions, 0)
    assert [q.answer_starts for q in moved] == [(-prefix,), (1201 + 1198,)]
    assert summary["start_mismatches"] == 0
    (data,) = squad_json(moved)["data"]
    for qa in data["paragraphs"][0]["qas"]:
        start, text = qa["answers"][0]["answer_start"], qa["answers"][0]["text"]
        assert data["paragraphs"][0]["context"][start : start + len(text)] == text


def test_a_question_without_another_passage_is_dropped_with_its_negative():
    # "a": two passages answered by 答え, one by 別; "b": one passage (no other to ask)
    questions = (
        article("a", [100, 100])
        + [Question("a-2", "a", "a2" + "い" * 97 + "別", "a2?", ("別",), (99,))]
        + article("b", [100])
    )
    mixed, summary = unanswerable_mix(questions, 0)
    assert summary == {
        "answerable": 3,
        "unanswerable": 3,
        "dropped": {"whose article has no other passage without their answers": 1},
    }
    negatives = {q.id: q.context for q in mixed if not q.answerable}
    assert negatives["a-0#noans"] == negatives["a-1#noans"] == questions[2].context
    assert negatives["a-2#noans"] in (questions[0].context, questions[1].context)
    # by passage: its own questions, then the negatives asked of it
    assert [q.id for q in mixed][-3:] == ["a-2", "a-0#noans", "a-1#noans"]
    with pytest.raises(InputError, match="no question could be asked of another passage"):
        unanswerable_mix(article("b", [100]), 0)


def test_a_question_without_answers_is_written_as_squad_v2():
    question = Question("n", "t", "本文", "?", (), ())
    (qa,) = squad_json([question])["data"][0]["paragraphs"][0]["qas"]
    assert qa == {"id": "n", "question": "?", "answers": [], "is_impossible": True}
