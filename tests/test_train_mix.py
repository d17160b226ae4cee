"""Training on a mix: `data.train` as a list of sources, each capped (`limit`) or weighted (`weight`), counted
per source; one source as a string reads exactly as before; a bad item is refused at load, named."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from jsquad_lora.config.load import config_to_yaml, load_config
from jsquad_lora.data.formats import read_split
from jsquad_lora.data.sampling import stratified_sample
from jsquad_lora.data.select import run_questions
from jsquad_lora.errors import InputError

#: no sample and no cut unless a test sets one: the mix is what is checked
WHOLE = ["data.train_sample=null", "data.train_sample_cpu_float32=null", "data.eval_sample=null"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """a.json: SQuAD JSON, 3 articles × 4 passages × 3 questions (36); b.jsonl: 8 simple rows, each its own
    passage (ids row1..row8); eval.json: 2 questions."""
    root = tmp_path_factory.mktemp("mix")
    articles = []
    for a in range(3):
        paragraphs = []
        for p in range(4):
            context = f"記事{a}の段落{p}。答え{a}{p}がここにある。"
            qas = [
                {
                    "id": f"a{a}p{p}q{k}",
                    "question": f"質問{a}{p}{k}",
                    "answers": [{"text": f"答え{a}{p}", "answer_start": context.index("答え")}],
                }
                for k in range(3)
            ]
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"記事{a}", "paragraphs": paragraphs})
    a_path = root / "a.json"
    a_path.write_text(json.dumps({"version": "v1.1", "data": articles}, ensure_ascii=False), "utf-8")
    b_path = root / "b.jsonl"
    rows = [
        {"context": f"生成された段落{i}。語{i}。", "question": f"生成質問{i}", "answer": f"語{i}"} for i in range(8)
    ]
    b_path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    e_path = root / "eval.json"
    e_path.write_text(json.dumps({"version": "v1.1", "data": articles[:1]}, ensure_ascii=False), "utf-8")
    return a_path, b_path, e_path


def _config(train: str, e_path, *more: str):
    return load_config(None, [f"data.train={train}", f"data.eval={e_path}", *WHOLE, *more])


def test_a_list_of_two_sources_with_a_cap_and_a_weight(sources):
    a, b, e = sources
    cfg = _config(f"[{{source: {a}, limit: 10}}, {{source: {b}, weight: 2.5}}]", e)
    train, _, _ = run_questions(cfg)
    a_questions = read_split(str(a), "train").questions
    b_questions = read_split(str(b), "train").questions
    from_a = [q for q in train if q.id.startswith("a")]
    assert len(from_a) == 10  # at most the cap: the first 10 of a sample of whole passages (stratified)
    assert from_a == stratified_sample(a_questions, 10, cfg.data.sample_seed)[:10]
    from_b = [q for q in train if q.id.startswith("row")]
    assert len(from_b) == 2 * 8 + 4  # weight 2.5: every question twice, and half of them (a seeded sample) once more
    copies = Counter((q.context, q.question) for q in from_b)
    assert set(copies) == {(q.context, q.question) for q in b_questions}
    assert sorted(copies.values()) == [2] * 4 + [3] * 4
    assert len({q.id for q in train}) == len(train)  # a repeat gets an id of its own: row1, row1#2, row1#3
    assert {q.id for q in from_b if q.question == "生成質問0"} <= {"row1", "row1#2", "row1#3"}
    assert train.sources == [
        {"source": str(a), "limit": 10, "weight": None, "read": 36, "mixed": 10, "questions": 10},
        {"source": str(b), "limit": None, "weight": 2.5, "read": 8, "mixed": 20, "questions": 20},
    ]
    again, _, _ = run_questions(cfg)
    assert again == train  # seeded: the same mix every time


def test_the_sample_and_limit_cut_the_mix_and_the_counts_follow(sources):
    a, b, e = sources
    cfg = _config(f"[{a}, {{source: {b}, weight: 0.5}}]", e, "data.train_limit=30")
    train, _, _ = run_questions(cfg)
    assert len(train) == 30
    assert [s["mixed"] for s in train.sources] == [36, 4]
    assert [s["questions"] for s in train.sources] == [30, 0]  # the first 30 of the mix: all from a
    cfg = _config(f"[{a}, {a}]", e)  # one source twice: its ids made unique
    train, _, _ = run_questions(cfg)
    assert len(train) == 72 and len({q.id for q in train}) == 72
    assert [q.id for q in train[36:38]] == ["a0p0q0#2", "a0p0q1#2"]


def test_a_single_source_reads_as_before(sources):
    a, b, e = sources
    cfg = _config(str(a), e, "data.train_sample=7")
    assert cfg.data.train == str(a)
    assert f"train: {a}\n" in config_to_yaml(cfg)  # the run's config.yaml is unchanged
    train, valid, population = run_questions(cfg)
    expected = stratified_sample(read_split(str(a), "train").questions, 7, cfg.data.sample_seed)
    assert list(train) == expected
    assert population == len(valid) == 12
    assert train.sources == [
        {"source": str(a), "limit": None, "weight": None, "read": 36, "mixed": 36, "questions": len(expected)}
    ]
    listed, _, _ = run_questions(_config(f"[{a}]", e, "data.train_sample=7"))
    assert list(listed) == expected  # a list of one source: the same questions


@pytest.mark.parametrize(
    "value, where, problem",
    [
        ("[a.json, 3]", "data.train[1]", "must be a source"),
        ("[a.json, {source: b.json, limit: 0}]", "data.train[1].limit", "positive integer"),
        ("[a.json, {source: b.json, limit: 2.5}]", "data.train[1].limit", "positive integer"),
        ("[a.json, {source: b.json, weight: -1}]", "data.train[1].weight", "positive number"),
        ("[a.json, {source: b.json, weight: true}]", "data.train[1].weight", "positive number"),
        ("[a.json, {limit: 5}]", "data.train[1]", "with a source"),
        ("[a.json, {source: b.json, cap: 5}]", "data.train[1]", "unknown key 'cap'"),
        ("[]", "data.train", "at least one source"),
    ],
)
def test_a_bad_item_is_refused_at_load_naming_it(value, where, problem):
    with pytest.raises(InputError) as err:
        load_config(None, [f"data.train={value}"])
    assert err.value.source == f"override data.train={value}"  # the override that set it
    assert err.value.where == where and problem in err.value.problem


def test_a_bad_item_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text("data:\n  train:\n    - a.json\n    - {source: b.json, weight: 0}\n", "utf-8")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert err.value.source == str(path) and err.value.where == "data.train[1].weight"
    assert "data.train[1].weight" in str(err.value)
