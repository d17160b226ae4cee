"""The model-free data layer of `data generate`: documents read from a folder, a table or a QA source; passages
cut at paragraph boundaries with exact offsets; MeCab answer candidates; the checks on a generated pair (the
answer a span, found by the tool; each reject reason); evaluation passages leaked into DOCS, found fast."""

from __future__ import annotations

import json
import time

import pytest
from conftest import SHARED, needs_data

from jsquad_lora.data.candidates import KINDS, mecab_candidates
from jsquad_lora.data.documents import Document, Passage, cut_passages, read_documents
from jsquad_lora.data.qa_checks import (
    COPY_CAP,
    LEAK_MIN_CHARS,
    NEAR_DUPLICATE,
    REJECT_REASONS,
    check_pair,
    eval_passage_leaks,
    locate_answer,
    longest_common_substring,
)
from jsquad_lora.data.question import Question
from jsquad_lora.data.rows import rows_to_split
from jsquad_lora.errors import InputError

# --- documents -------------------------------------------------------------------------------------------


def test_a_folder_of_documents(tmp_path):
    (tmp_path / "b.md").write_text("前書き\n\n## 梅雨の話 ##\n\n梅雨は東アジアの気象現象である。\n", "utf-8")
    (tmp_path / "a.txt").write_bytes("\ufeff一行目。\r\n二行目。\r\n".encode("utf-8"))  # Excel-style BOM, CRLF
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("下の階層。", "utf-8")
    (tmp_path / "notes.csv").write_text("ignored", "utf-8")  # only .txt / .md files are documents
    (tmp_path / ".hidden.txt").write_text("隠しファイル", "utf-8")
    documents, questions = read_documents(str(tmp_path))
    assert questions == []
    assert [d.id for d in documents] == ["a.txt", "b.md", "sub/c.txt"]  # sorted paths inside the folder
    assert [d.title for d in documents] == ["a", "梅雨の話", "c"]  # a .md's first heading, else the stem
    assert documents[0].text == "一行目。\n二行目。\n"  # no BOM, lines end in \n
    assert documents[0].source == str(tmp_path / "a.txt")


def test_a_document_that_is_not_utf8_is_an_error_naming_the_file_and_the_fix(tmp_path):
    (tmp_path / "good.txt").write_text("ASCII text is UTF-8 and cp932 alike", "utf-8")
    (tmp_path / "sjis.txt").write_bytes("梅雨は日本の気象現象。".encode("cp932"))
    with pytest.raises(InputError) as err:
        read_documents(str(tmp_path))
    text = str(err.value)
    assert "sjis.txt" in text and "not UTF-8" in text and "--encoding cp932" in text
    documents, _ = read_documents(str(tmp_path), encoding="cp932")  # named, it reads
    assert documents[1].text == "梅雨は日本の気象現象。"


def test_a_folder_without_documents_and_a_missing_path_are_errors(tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n", "utf-8")
    with pytest.raises(InputError, match="no .txt or .md files"):
        read_documents(str(tmp_path))
    with pytest.raises(InputError, match="not found"):
        read_documents(str(tmp_path / "nowhere"))


def test_a_table_of_documents(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    rows = [{"id": "m1", "title": "議事録", "text": "第1回の議事。\n\n決定事項。"}, {"id": 7, "text": "二つ目。"}]
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    documents, questions = read_documents(str(jsonl))
    assert questions == []
    assert [(d.id, d.title, d.text) for d in documents] == [
        ("m1", "議事録", "第1回の議事。\n\n決定事項。"),
        ("7", "7", "二つ目。"),  # no title: the id
    ]
    assert documents[1].source == f"{jsonl}: line 2"

    csv_path = tmp_path / "docs.csv"
    csv_path.write_text("名前,本文\n報告書,売上は増えた。\n手引き,電源を入れる。\n", "utf-8")
    documents, _ = read_documents(str(csv_path), columns={"text": "本文", "title": "名前"})
    assert [(d.id, d.title, d.text) for d in documents] == [
        ("row1", "報告書", "売上は増えた。"),
        ("row2", "手引き", "電源を入れる。"),
    ]
    # the QA mapping of own data serves too: context is the text
    documents, _ = read_documents(str(csv_path), columns={"context": "本文", "document": "名前"})
    assert [d.title for d in documents] == ["報告書", "手引き"]
    with pytest.raises(InputError) as err:
        read_documents(str(csv_path), columns={"text": "body"})
    assert "'body'" in str(err.value) and "名前, 本文" in str(err.value)
    csv_path.write_text("名前\n報告書\n", "utf-8")
    with pytest.raises(InputError, match="no text column"):
        read_documents(str(csv_path))
    jsonl.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "utf-8")
    with pytest.raises(InputError, match="duplicate id") as err:
        read_documents(str(jsonl))
    assert "line 2" in str(err.value)


@needs_data()
def test_a_qa_source_gives_its_passages_as_documents_and_its_questions():
    path = SHARED / "valid-v1.3.json"
    documents, questions = read_documents(str(path))
    root = json.loads(path.read_text("utf-8"))
    expected = [
        (article["title"], paragraph["context"].split(" [SEP] ", 1)[1])
        for article in root["data"]
        for paragraph in article["paragraphs"]
    ]
    distinct = list(dict.fromkeys(expected))
    assert [(d.title, d.text) for d in documents] == distinct  # one per distinct passage, in file order
    assert not any("[SEP]" in d.text for d in documents)  # the reader strips `title [SEP] `
    assert len({d.id for d in documents}) == len(documents)
    assert documents[0].id == f"{documents[0].title}/0"
    assert len(questions) == sum(len(p["qas"]) for a in root["data"] for p in a["paragraphs"])
    texts = {d.text for d in documents}
    assert all(q.context in texts for q in questions)
    # SRC:SPLIT and a JGLUE directory are QA sources too (not a folder of documents: it holds README.md)
    assert [(d.id, d.title, d.text) for d in read_documents(f"{SHARED}:valid")[0]] == [
        (d.id, d.title, d.text) for d in documents
    ]


def test_a_table_with_a_question_column_is_a_qa_source(tmp_path):
    rows = tmp_path / "qa.jsonl"
    lines = [
        {
            "context": "富士山は日本一高い山である。",
            "question": "日本一高い山は?",
            "answer": "富士山",
            "document": "山",
        },
        {
            "context": "富士山は日本一高い山である。",
            "question": "富士山はどこの山?",
            "answer": "日本",
            "document": "山",
        },
        {"context": "琵琶湖は日本一大きい湖。", "question": "日本一大きい湖は?", "answer": "琵琶湖", "document": "湖"},
    ]
    rows.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in lines), "utf-8")
    documents, questions = read_documents(str(rows))
    assert [(d.id, d.title, d.text) for d in documents] == [
        ("山/0", "山", "富士山は日本一高い山である。"),
        ("湖/0", "湖", "琵琶湖は日本一大きい湖。"),
    ]
    assert [q.answers for q in questions] == [("富士山",), ("日本",), ("琵琶湖",)]


# --- passages ----------------------------------------------------------------------------------------------


def _check_passages(documents, passages, max_tokens, count=len):
    by_id = {d.id: d for d in documents}
    for p in passages:
        assert by_id[p.document].text[p.start : p.start + len(p.text)] == p.text  # the offsets are exact
        assert p.text == p.text.strip() and p.text
        assert count(p.text) <= max_tokens
        assert p.id == f"{p.document}#p{p.index}"
    for document in documents:  # in order, not overlapping, every non-space character in some passage
        own = [p for p in passages if p.document == document.id]
        assert [p.index for p in own] == list(range(len(own)))
        assert all(a.start + len(a.text) <= b.start for a, b in zip(own, own[1:]))
        assert "".join("".join(p.text.split()) for p in own) == "".join(document.text.split())


def test_paragraphs_are_joined_while_they_fit_and_offsets_are_exact():
    text = "  第一段落です。\n\n第二段落。\n \n\n第三段落は少し長めの文章です。\n第三段落の二行目。\n\n\n最後。  \n"
    doc = Document("d", "題", text, "mem")
    passages = cut_passages([doc, Document("empty", "空", " \n\n ", "mem")], 20, len)
    assert [p.text for p in passages] == [
        "第一段落です。\n\n第二段落。",  # 7 + 2 + 5 = 14 characters: joined; with the third over 20
        "第三段落は少し長めの文章です。",  # a paragraph over 20: cut at its line end
        "第三段落の二行目。\n\n\n最後。",
    ]
    assert [p.start for p in passages] == [2, text.index("第三"), text.index("第三段落の二")]
    _check_passages([doc], passages, 20)
    assert cut_passages([doc], 1000, len)[0].text == text.strip()  # it all fits: one passage


def test_a_long_paragraph_is_cut_at_sentence_ends_then_by_bisection():
    sentences = ["これは一つ目の文です。", "二つ目！", "三つ目の文は「引用」で終わる。」", "四つ目?"]
    long_sentence = "あ" * 45 + "。"
    text = "".join(sentences) + long_sentence + "最後の文。"
    doc = Document("d", "t", text, "mem")
    passages = cut_passages([doc], 20, len)
    _check_passages([doc], passages, 20)
    assert passages[0].text == "これは一つ目の文です。二つ目！"  # whole sentences joined while they fit
    assert passages[1].text == "三つ目の文は「引用」で終わる。」四つ目?"
    assert [len(p.text) for p in passages[2:]] == [20, 20, 11]  # 46 characters: the most that fit, by bisection
    assert passages[-1].text.endswith("。最後の文。")

    def tokens(s: str) -> int:  # a tokenizer's count is not the length: two characters a token
        return (len(s) + 1) // 2

    passages = cut_passages([doc], 8, tokens)
    _check_passages([doc], passages, 8, tokens)
    with pytest.raises(ValueError):
        cut_passages([doc], 0, len)


@needs_data()
def test_jsquad_passages_fit_and_keep_their_offsets():
    documents, _ = read_documents(str(SHARED / "valid-v1.3.json"))
    documents = documents[:200]
    passages = cut_passages(documents, 60, len)
    _check_passages(documents, passages, 60)
    whole = cut_passages(documents, 10_000, len)  # a JSQuAD passage is one window: one passage, at offset 0
    assert [(p.text, p.start) for p in whole] == [(d.text.strip(), 0) for d in documents]


# --- candidates ----------------------------------------------------------------------------------------


@needs_data()
def test_mecab_candidates_on_a_jsquad_passage():
    documents, _ = read_documents(str(SHARED / "valid-v1.3.json"))
    passage = documents[0].text  # 梅雨（つゆ、ばいう）は、北海道と小笠原諸島を除く日本、...
    candidates = mecab_candidates(passage)
    for c in candidates:
        assert passage[c.start : c.start + len(c.text)] == c.text
        assert c.start >= passage.find(c.text)  # where it was first found as a candidate (南部 of 中国の南部, not
        # of 朝鮮半島南部, a phrase of its own)
        assert c.kind in KINDS
    assert len({c.text for c in candidates}) == len(candidates)
    ranks = [(KINDS.index(c.kind), c.start) for c in candidates]
    assert ranks == sorted(ranks)
    kinds = {c.text: c.kind for c in candidates}
    assert kinds["5月"] == "number" and kinds["7月"] == "number"
    assert kinds["北海道"] == "proper_noun" and kinds["台湾"] == "proper_noun"
    assert kinds["小笠原諸島"] == "noun_phrase" and kinds["気象現象"] == "noun_phrase"
    assert not [c for c in candidates if len(c.text) == 1 and not c.text.isalnum()]
    assert mecab_candidates(passage, limit=3) == candidates[:3]


def test_mecab_candidate_kinds():
    text = (
        "1998年に平成10年3月5日、東京の日本銀行で3人が25%の株を三つ買った。"
        "第2回大会は約1,200万円。令和元年にジョン・スミスが来た。"
    )
    candidates = mecab_candidates(text)
    kinds = {c.text: c.kind for c in candidates}
    assert kinds["平成10年3月5日"] == "date" and kinds["令和元年"] == "date"
    for number in ("1998年", "3人", "25%", "三つ", "第2回", "約1,200万円"):
        assert kinds[number] == "number", number
    assert kinds["ジョン・スミス"] == "proper_noun" and kinds["東京"] == "proper_noun"
    assert kinds["日本銀行"] == "noun_phrase"
    assert "200万円" not in kinds and "25" not in kinds  # no phrase cut out of a number
    assert not [t for t in kinds if len(t) == 1 and "\u3040" <= t <= "\u30ff"]  # no single kana
    assert mecab_candidates("") == [] and mecab_candidates("。、！") == []


# --- the checks on a pair ------------------------------------------------------------------------------


def test_locate_answer():
    passage = "東京は日本の首都。大阪は日本の第二の都市。日本は島国。"
    assert locate_answer(passage, "名古屋") is None  # not a span
    assert locate_answer(passage, "   ") is None
    assert locate_answer(passage, " 大阪 ") == passage.index("大阪")  # surrounding whitespace dropped
    first, second, third = [i for i in range(len(passage)) if passage.startswith("日本", i)]
    assert locate_answer(passage, "日本") == first  # as own data: the first occurrence
    assert locate_answer(passage, "日本", hint=second + 1) == second  # the occurrence nearest the hint
    assert locate_answer(passage, "日本", hint=len(passage)) == third
    assert locate_answer(passage, "日本", hint=(first + second) // 2) == first  # a tie: the earlier
    assert locate_answer(passage, "首都", hint=40) == passage.index("首都")  # a generator's wrong offset: recomputed
    # own data reads a repeated answer the same way: the first occurrence, counted as ambiguous
    split = rows_to_split([{"context": passage, "question": "どこ?", "answer": "日本"}], "mem")
    assert split.questions[0].answer_starts == (first,) and split.ambiguous_answers == ("row1",)


def test_every_reject_reason():
    passage = "富士山は静岡県と山梨県にまたがる活火山である。標高は3776メートルで、日本最高峰である。"
    assert REJECT_REASONS == (
        "endpoint_refused",
        "not_json",
        "empty",
        "answer_not_in_passage",
        "question_contains_answer",
        "near_duplicate",
        "copies_passage",
        "round_trip",
    )
    assert check_pair(passage, "富士山の標高は何メートル?", "3776メートル", None, []) == (
        passage.index("3776"),
        None,
    )
    assert check_pair(passage, " ", "3776メートル", None, []) == (None, "empty")
    assert check_pair(passage, "標高は?", "", None, []) == (None, "empty")
    assert check_pair(passage, "標高は?", "3000メートル", 30, []) == (None, "answer_not_in_passage")
    # the question holds its answer, compared after NFKC (full-width digits) and without spaces
    assert check_pair(passage, "標高３７７６ メートルの山は?", "3776メートル", None, []) == (
        None,
        "question_contains_answer",
    )
    earlier = ["富士山の標高は何メートルか?"]
    assert check_pair(passage, "富士山の標高は何メートルか？", "3776メートル", None, earlier) == (
        None,
        "near_duplicate",
    )
    assert check_pair(passage, "富士山はどの県にまたがる?", "静岡県と山梨県", None, earlier)[1] is None
    copied = "標高は3776メートルで、日本最高峰である"  # a passage fragment, not a question
    assert check_pair(passage, copied, "富士山", None, []) == (None, "copies_passage")
    assert check_pair(passage, "静岡県と山梨県にまたがる活火山は何?", "富士山", None, [])[1] is None
    assert 0 < COPY_CAP < 1 and 0 < NEAR_DUPLICATE < 1


def test_longest_common_substring():
    assert longest_common_substring("abcxyz", "zzabcqxyzz") == 3
    assert longest_common_substring("", "abc") == 0
    assert longest_common_substring("日本の首都は?", "東京は日本の首都である") == 5


# --- evaluation passages leaked into DOCS -------------------------------------------------------------


def _question(qid: str, context: str) -> Question:
    return Question(qid, "t", context, "?", ("x",), (0,))


def test_eval_passage_leaks_both_ways():
    eval_text = (
        "梅雨は、北海道と小笠原諸島を除く日本、朝鮮半島南部、中国の南部から長江流域にかけての沿海部にみられる気象現象。"
    )
    other = "琵琶湖は滋賀県にある日本最大の湖で、その面積は滋賀県の面積の約6分の1を占める。湖には多くの河川が流れ込む。"
    evaluation = [_question("e1", eval_text), _question("e2", eval_text), _question("e3", other)]
    holds = Passage(
        "big.txt", "t", "前置き。\n" + eval_text.replace("、", "、 ").replace("日本", "日本") + "\n後書き。", 0, 0
    )
    widened = Passage("wide.txt", "t", "ＡＢＣ " + other[:40], 0, 0)  # full-width letters: NFKC makes them ABC
    inside = Passage("part.txt", "t", other[5:45], 0, 0)  # 40 characters of an evaluation passage
    short = Passage("short.txt", "t", other[:20], 0, 0)  # under LEAK_MIN_CHARS: no leak
    unrelated = Passage(
        "x.txt", "t", "全く関係のない文書の段落で、評価データとは一文字も重ならない内容を書いておく。", 0, 0
    )
    found = eval_passage_leaks([holds, widened, inside, short, unrelated], evaluation, limit=None)
    assert [(p.document, qid) for p, qid in found] == [("big.txt", "e1"), ("part.txt", "e3")]
    assert len(short.text) < LEAK_MIN_CHARS
    assert eval_passage_leaks([holds, inside], evaluation, limit=1) == [(holds, "e1")]
    assert eval_passage_leaks([unrelated], evaluation) == []


@needs_data()
def test_eval_passage_leaks_are_fast_on_all_of_dev():
    documents, questions = read_documents(str(SHARED / "valid-v1.3.json"))
    passages = cut_passages(documents, 10_000, len)
    started = time.perf_counter()
    found = eval_passage_leaks(passages, questions, limit=None)
    elapsed = time.perf_counter() - started
    long_enough = [p for p in passages if len("".join(p.text.split())) >= LEAK_MIN_CHARS]
    assert [p for p, _ in found] == long_enough  # every dev passage is a dev passage
    test_documents, _ = read_documents(str(SHARED / "test-v1.3.json"))
    started = time.perf_counter()
    assert eval_passage_leaks(cut_passages(test_documents, 10_000, len), questions, limit=None) == []
    elapsed = max(elapsed, time.perf_counter() - started)
    assert elapsed < 5, f"{len(passages)} × {len(documents)} passages took {elapsed:.1f} s"
