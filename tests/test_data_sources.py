"""A user's own data: every source and row schema reads back the questions of the SQuAD JSON it was written
from (ids, contexts, answers, offsets); every bad input is one error naming the file, the row and the fix;
a tiny run trains on a CSV and evaluates on parquet."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from conftest import SHARED, TINY_TEST, needs_data

from jsquad_lora.cli import main
from jsquad_lora.data.formats import read_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.errors import InputError

pytestmark = needs_data()
JP = {"context": "本文", "question": "質問", "answer": "回答", "id": "番号", "document": "文書"}


@pytest.fixture(scope="module")
def squad(tmp_path_factory):
    """The first articles of JSQuAD dev as SQuAD JSON, its questions, and its rows in HF's flat schema (the
    full context with its `<title> [SEP] ` prefix and the offsets as given, as the hub's JSQuAD has them)."""
    root = json.loads((SHARED / "valid-v1.3.json").read_text("utf-8"))
    root["data"] = root["data"][:3]
    path = tmp_path_factory.mktemp("squad") / "slice.json"
    path.write_text(json.dumps(root, ensure_ascii=False), "utf-8")
    rows = [
        {
            "id": qa["id"],
            "title": article["title"],
            "context": paragraph["context"],
            "question": qa["question"],
            "answers": {
                "text": [a["text"] for a in qa["answers"]],
                "answer_start": [a["answer_start"] for a in qa["answers"]],
            },
        }
        for article in root["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    return path, load_split(path).questions, rows


def same(read, questions):
    assert [q.id for q in read] == [q.id for q in questions]
    assert read == tuple(questions)


def test_flat_rows_in_every_file_format(squad, tmp_path):
    import datasets

    _, questions, rows = squad
    table = datasets.Dataset.from_list(rows)
    table.to_json(tmp_path / "rows.jsonl", force_ascii=False)
    (tmp_path / "rows.json").write_text(json.dumps(rows, ensure_ascii=False), "utf-8")
    table.to_parquet(tmp_path / "rows.parquet")
    table.save_to_disk(tmp_path / "one")
    arrow = next((tmp_path / "one").glob("*.arrow"))
    for path in (tmp_path / "rows.jsonl", tmp_path / "rows.json", tmp_path / "rows.parquet", arrow, tmp_path / "one"):
        same(read_split(path, "valid").questions, questions)


def test_a_saved_dataset_dict_and_its_splits(squad, tmp_path):
    import datasets

    _, questions, rows = squad
    half = len(questions) // 2
    saved = datasets.DatasetDict(
        train=datasets.Dataset.from_list(rows[:half]),
        validation=datasets.Dataset.from_list(rows[half:]),
    )
    saved.save_to_disk(tmp_path / "dd")
    same(read_split(tmp_path / "dd", "train").questions, questions[:half])
    same(read_split(tmp_path / "dd", "valid").questions, questions[half:])  # valid → validation
    same(read_split(f"{tmp_path / 'dd'}:validation", "train").questions, questions[half:])  # SRC:SPLIT wins
    with pytest.raises(InputError, match="its splits: train, validation"):
        read_split(f"{tmp_path / 'dd'}:test", "valid")


def write_simple_csv(path, questions, encoding="utf-8-sig", header=JP):
    with open(path, "w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow([header[k] for k in ("id", "document", "context", "question", "answer")])
        for q in questions:
            writer.writerow([q.id, q.title, q.context, q.question, q.answers[0]])


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_simple_rows_with_japanese_headers(squad, tmp_path, suffix):
    _, questions, rows = squad
    questions = [q for q in questions if q.answers[0] in q.context]  # JSQuAD has a few in the title alone
    path = tmp_path / f"qa{suffix}"
    write_simple_csv(path, questions)
    split = read_split(path, "valid", columns=JP)
    found = {q.id: q for q in split.questions}
    for q in questions:  # one gold text, at its first occurrence
        got = found[q.id]
        assert (got.title, got.context, got.question, got.answers) == (q.title, q.context, q.question, q.answers[:1])
        assert got.answer_starts == (q.context.find(q.answers[0]),)
    ambiguous = {q.id for q in questions if q.context.count(q.answers[0]) > 1}
    assert set(split.ambiguous_answers) == ambiguous and ambiguous  # stats reports them
    stats = subprocess.run(
        [sys.executable, "-m", "jsquad_lora.cli", "stats", str(path), "--json", "--columns", _columns(JP)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["ambiguous_answers"] == len(ambiguous)


def _columns(mapping):
    return ",".join(f"{k}={v}" for k, v in mapping.items())


def _in_cp932(text):
    try:
        text.encode("cp932")
        return True
    except UnicodeEncodeError:
        return False


def test_cp932_csv_needs_its_encoding_named(squad, tmp_path, capsys):
    _, questions, rows = squad
    questions = [q for q in questions if q.answers[0] in q.context]
    questions = [q for q in questions if all(_in_cp932(t) for t in (q.title, q.context, q.question))]
    path = tmp_path / "sjis.csv"
    write_simple_csv(path, questions, encoding="cp932")
    assert main(["stats", str(path), "--columns", _columns(JP)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--encoding cp932" in err
    assert main(["stats", str(path), "--columns", _columns(JP), "--encoding", "cp932"]) == 0


@pytest.mark.parametrize(
    "text, phrase, where",
    [
        ("context,question,answer\n梅雨は東アジアの現象。,どこ？,西アジア\n", "does not occur in its context", "row 1"),
        ("context,question\n梅雨は東アジアの現象。,どこ？\n", "no answer column", None),
        ("context,question,answer\n梅雨は東アジアの現象。,,東アジア\n", "question column is empty", "row 1"),
        ("context,question,answer\n梅雨は東アジアの現象。,どこ？,東アジア,x\n", "has 4 fields, the header 3", "line 2"),
        (
            "id,context,question,answer\n7,梅雨は東アジア。,どこ？,東アジア\n7,梅雨は東アジア。,何？,梅雨\n",
            "duplicate id",
            "row 2",
        ),
        ("context,question,answer\n", "no rows", None),
    ],
    ids=["answer-not-in-context", "missing-column", "empty-cell", "ragged-row", "duplicate-id", "no-rows"],
)
def test_bad_rows_name_the_file_and_row(tmp_path, capsys, text, phrase, where):
    path = tmp_path / "bad.csv"
    path.write_text(text, "utf-8")
    assert main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and phrase in err and "fix:" in err and "Traceback" not in err, err
    if where:
        assert where in err, err


def test_a_mapped_column_that_is_not_there_lists_the_columns(tmp_path, capsys):
    path = tmp_path / "qa.csv"
    path.write_text("本文,質問,答え\n梅雨は東アジアの現象。,どこ？,東アジア\n", "utf-8")
    assert main(["stats", str(path), "--columns", "context=本文,question=質問,answer=回答"]) == 2
    err = capsys.readouterr().err
    assert "'回答'" in err and "its columns are: 本文, 質問, 答え" in err, err


def test_an_unreadable_parquet_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    assert main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "cannot read it as parquet" in err and "Traceback" not in err, err


def test_the_hub_offline_names_what_to_fetch(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "jsquad_lora.cli", "stats", "hf:sbintuitions/JSQuAD:validation"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "hf:sbintuitions/JSQuAD" in result.stderr and "save_to_disk" in result.stderr, result.stderr


def test_the_hub_through_datasets(squad, tmp_path, monkeypatch):
    """`hf:ID:CONFIG:SPLIT` and `hf:ID:SPLIT` reach datasets with the right name, config and split (the
    download itself is datasets': here it is served from a local saved dataset)."""
    import datasets

    _, questions, rows = squad
    local = datasets.DatasetDict(
        train=datasets.Dataset.from_list(rows[:5]),
        validation=datasets.Dataset.from_list(rows[5:]),
    )
    calls = []

    class Builder:
        info = datasets.DatasetInfo(
            splits=datasets.SplitDict(
                {"train": datasets.SplitInfo("train"), "validation": datasets.SplitInfo("validation")}
            )
        )

    monkeypatch.setattr(datasets, "load_dataset_builder", lambda name, config, revision=None: Builder())

    def load(name, config, revision=None, split=None):
        calls.append((name, config, revision, split))
        return local[split]

    monkeypatch.setattr(datasets, "load_dataset", load)
    same(read_split("hf:shunk031/JGLUE:JSQuAD:validation", "train").questions, questions[5:])
    same(read_split("hf:sbintuitions/JSQuAD", "train").questions, questions[:5])
    same(read_split("hf:sbintuitions/JSQuAD@v1:validation", "train").questions, questions[5:])
    assert calls == [
        ("shunk031/JGLUE", "JSQuAD", None, "validation"),
        ("sbintuitions/JSQuAD", None, None, "train"),
        ("sbintuitions/JSQuAD", None, "v1", "validation"),
    ]


def test_a_run_trains_on_a_csv_and_evaluates_on_parquet(squad, tmp_path):
    import datasets

    _, questions, rows = squad
    rows, questions = zip(*[(r, q) for r, q in zip(rows, questions) if q.answers[0] in q.context])
    train_csv = tmp_path / "train.csv"
    write_simple_csv(train_csv, questions[:40])
    datasets.Dataset.from_list(rows[40:56]).to_parquet(tmp_path / "dev.parquet")
    out = tmp_path / "run"
    overrides = [
        f"data.train={train_csv}",
        f"data.eval={tmp_path / 'dev.parquet'}",
        "data.columns={" + ", ".join(f"{k}: {v}" for k, v in JP.items()) + "}",
    ]
    assert main(["run", "--output", str(out), *TINY_TEST, "eval.side_check=false", *overrides]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["after"]["jglue"]["count"] == 16
    assert metrics["train"]["examples"] - metrics["train"]["synthetic_examples"] == 40
    rows = [json.loads(line) for line in (out / "predictions-after.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [q.id for q in questions[40:56]]


def test_a_split_inside_a_jglue_directory():
    same(read_split(f"{SHARED}:valid", "train").questions, load_split(SHARED / "valid-v1.3.json").questions)
    with pytest.raises(InputError, match="unknown split name"):
        read_split(f"{SHARED}:nosuch", "valid")


def test_a_config_column_mapping_leaves_squad_json_as_it_is(squad):
    path, questions, _ = squad
    same(read_split(path, "valid", columns=JP).questions, questions)  # data.columns maps the config's tables
