"""`jsquad-lora data convert` and `jsquad-lora data split`: SQuAD JSON written from validated questions."""

import json
from dataclasses import astuple

import pytest
from conftest import SHARED, needs_data

from jsquad_lora.cli import main
from jsquad_lora.commands.data import parse_columns
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.data.question import Question
from jsquad_lora.data.write import SPLIT_MARKER, document_of, squad_json, write_squad_json

VALID = SHARED / "valid-v1.3.json"
pytestmark = needs_data()


@pytest.fixture(scope="module")
def valid():
    return load_split(VALID).questions


@pytest.fixture
def small(tmp_path):
    """A slice of valid-v1.3.json: its first six articles, as JSQuAD wrote them."""
    root = json.loads(VALID.read_text(encoding="utf-8"))
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"version": "v1.1", "data": root["data"][:6]}, ensure_ascii=False), encoding="utf-8")
    return path


def rows(questions):
    return [astuple(q) for q in questions]


def test_convert_round_trip_on_a_slice(small, tmp_path):
    out = tmp_path / "out.json"
    assert main(["data", "convert", str(small), "--output", str(out)]) == 0
    assert rows(load_split(out).questions) == rows(load_split(small).questions)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["version"] == "v1.1"
    qa = written["data"][0]["paragraphs"][0]["qas"][0]
    assert set(qa) == {"id", "question", "answers", "is_impossible"} and qa["is_impossible"] is False
    assert set(qa["answers"][0]) == {"text", "answer_start"}
    # JSQuAD's layout: "<title> [SEP] <body>", offsets into the whole context
    original = json.loads(small.read_text(encoding="utf-8"))
    assert written["data"][0]["paragraphs"][0]["context"] == original["data"][0]["paragraphs"][0]["context"]
    assert qa["answers"] == original["data"][0]["paragraphs"][0]["qas"][0]["answers"]


def test_convert_round_trip_on_the_whole_file(valid, tmp_path, capsys):
    out = tmp_path / "valid.json"
    assert main(["data", "convert", str(VALID), "--output", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    back = load_split(out).questions
    assert len(back) == len(valid) == 4442
    assert rows(back) == rows(valid)


def test_convert_replaces_a_file_but_refuses_a_directory(small, tmp_path, capsys):
    out = tmp_path / "out.json"
    out.write_text("old", encoding="utf-8")
    assert main(["data", "convert", str(small), "--output", str(out)]) == 0
    assert load_split(out).questions
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine", encoding="utf-8")
    capsys.readouterr()
    assert main(["data", "convert", str(small), "--output", str(folder)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_convert_writes_nothing_when_the_source_is_bad(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": [{}]}]}]}', encoding="utf-8")
    out = tmp_path / "out.json"
    assert main(["data", "convert", str(bad), "--output", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.json"]


def test_written_contexts_read_back_exactly_in_edge_cases(tmp_path):
    questions = [
        Question("a", "", "no title here", "q?", ("title",), (3,)),
        Question("b", "", "x [SEP] body holds the separator", "q?", ("body",), (8,)),
        Question("c", "T [SEP] odd", "body", "q?", ("body",), (0,)),
        Question("d", "T", "second doc", "q?", ("doc", "second"), (7, 0)),
        Question("e", "", "no title here", "q2?", ("no",), (0,)),  # same titleless passage: one paragraph
    ]
    path = write_squad_json(tmp_path / "edge.json", questions)
    back = load_split(path).questions
    assert sorted(rows(back)) == sorted(rows(questions))
    data = squad_json(questions)["data"]
    assert [a["title"] for a in data] == ["", "T [SEP] odd", "T"]
    assert [len(p["qas"]) for p in data[0]["paragraphs"]] == [2, 1]


def test_bad_questions_are_refused(tmp_path):
    from jsquad_lora.errors import InputError

    q = Question("a", "t", "body", "q?", ("bo",), (0,))
    with pytest.raises(InputError, match="duplicate"):
        squad_json([q, q])
    with pytest.raises(InputError, match="outside"):
        squad_json([Question("a", "", "body", "q?", ("x",), (9,))])
    with pytest.raises(InputError, match="no questions"):
        write_squad_json(tmp_path / "none.json", [])
    assert not (tmp_path / "none.json").exists()


def split(src, out, fraction, seed):
    argv = ["data", "split", str(src), "--by", "document", "--eval-fraction", str(fraction), "--seed", str(seed)]
    return main([*argv, "--output", str(out)])


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3, 0.5, 0.9])
def test_split_keeps_documents_whole(valid, tmp_path, fraction):
    for seed in (0, 1, 1234):
        out = tmp_path / f"split-{seed}"
        assert split(VALID, out, fraction, seed) == 0
        train, evaluation = load_split(out / "train.json").questions, load_split(out / "eval.json").questions
        assert not {document_of(q) for q in train} & {document_of(q) for q in evaluation}
        assert train and evaluation
        assert len(train) + len(evaluation) == len(valid)
        assert sorted(rows(train) + rows(evaluation)) == sorted(rows(valid))
        # each half keeps the source's order
        order = {q.id: i for i, q in enumerate(valid)}
        assert [order[q.id] for q in train] == sorted(order[q.id] for q in train)
        assert abs(len(evaluation) / len(valid) - fraction) < 0.05  # 59 articles of ~75 questions each
        assert (out / SPLIT_MARKER).is_file()


def test_split_is_deterministic_and_the_seed_matters(tmp_path, capsys):
    for name in ("a", "b"):
        assert split(VALID, tmp_path / name, 0.2, 7) == 0
    printed = capsys.readouterr().out
    assert "train.json" in printed and "eval.json" in printed and "questions" in printed
    for file in ("train.json", "eval.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert split(VALID, tmp_path / "c", 0.2, 8) == 0
    ids = {name: {q.id for q in load_split(tmp_path / name / "eval.json").questions} for name in ("a", "c")}
    assert ids["a"] != ids["c"]


def test_split_prints_the_paths_and_counts(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert split(small, out, 0.3, 0) == 0
    lines = capsys.readouterr().out.splitlines()
    train, evaluation = load_split(out / "train.json").questions, load_split(out / "eval.json").questions
    assert lines[0].startswith(f"{out / 'train.json'}: {len(train)} questions")
    assert lines[1].startswith(f"{out / 'eval.json'}: {len(evaluation)} questions")


def test_split_refuses_a_users_folder_untouched(small, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me", encoding="utf-8")
    assert split(small, folder, 0.3, 0) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    assert split(small, a_file, 0.3, 0) == 2
    assert a_file.read_text(encoding="utf-8") == "x"


def test_split_into_an_empty_folder_and_again_into_its_own_output(small, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert split(small, out, 0.3, 0) == 0
    first_train = load_split(out / "train.json").questions
    # re-split the train half into the same directory: read first, then the directory is replaced whole
    assert split(out / "train.json", out, 0.4, 1) == 0
    train, evaluation = load_split(out / "train.json").questions, load_split(out / "eval.json").questions
    assert sorted(rows(train) + rows(evaluation)) == sorted(rows(first_train))
    assert not {document_of(q) for q in train} & {document_of(q) for q in evaluation}
    assert sorted(p.name for p in out.iterdir()) == sorted(["train.json", "eval.json", SPLIT_MARKER])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_a_one_document_source_is_refused(tmp_path, capsys):
    root = json.loads(VALID.read_text(encoding="utf-8"))
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"data": root["data"][:1]}, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    assert split(one, out, 0.5, 0) == 2
    err = capsys.readouterr().err
    assert "1 document" in err and "at least two" in err
    assert not out.exists()


def test_untitled_questions_split_by_their_passage(tmp_path):
    questions = [Question(f"q{i}", "", f"passage {i % 3}", "q?", ("passage",), (0,)) for i in range(9)]
    src = write_squad_json(tmp_path / "untitled.json", questions)
    assert split(src, tmp_path / "out", 0.3, 0) == 0
    evaluation = load_split(tmp_path / "out" / "eval.json").questions
    train = load_split(tmp_path / "out" / "train.json").questions
    assert len(evaluation) == 3 and len(train) == 6
    assert not {q.context for q in train} & {q.context for q in evaluation}


@pytest.mark.parametrize(
    "argv",
    [
        ["--by", "title"],
        ["--eval-fraction", "0"],
        ["--eval-fraction", "1.5"],
        ["--eval-fraction", "nan"],
        ["--columns", "context"],
        ["--columns", "body=本文"],
        ["--columns", "context=a,context=b"],
    ],
)
def test_bad_options_are_usage_errors(argv, tmp_path, capsys):
    base = {"--by": "document", "--eval-fraction": "0.1", "--seed": "0", "--output": str(tmp_path / "out")}
    base.update(zip(argv[::2], argv[1::2]))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "split", str(VALID), *[item for pair in base.items() for item in pair]])
    assert exit_info.value.code == 2
    assert "error: argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_columns_parse():
    assert parse_columns("context=本文,question=質問,answer=回答") == {
        "context": "本文",
        "question": "質問",
        "answer": "回答",
    }
    assert parse_columns(" id = ID , document=文書") == {"id": "ID", "document": "文書"}


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.9, 0.99])
def test_two_documents_go_one_each_side(fraction):
    from jsquad_lora.data.write import split_by_document

    questions = [Question(f"q{i}", f"doc{i % 2}", "body", "q?", ("bo",), (0,)) for i in range(4)]
    for seed in range(5):
        train, evaluation = split_by_document(questions, fraction, seed)
        assert len({q.title for q in train}) == len({q.title for q in evaluation}) == 1
