"""Documents, not passages: windows over long passages (training, evaluation, ask, serve), questions without an
answer (SQuAD v2 scores), abstention, and resuming a windowed evaluation."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_TEST, needs_data

from jsquad_lora.cli import main
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.data.question import Question
from jsquad_lora.encoding.tokens import prompt_ids
from jsquad_lora.encoding.windows import ROOM_STEP, encode_train_windows, passage_windows
from jsquad_lora.errors import InputError
from jsquad_lora.evaluate.loop import _answered, _window_row, partial_log
from jsquad_lora.evaluate.scorers import SCORERS, answerability_scores, score_predictions
from jsquad_lora.generate.decoding import ScoredAnswer, abstain_margin, best_window
from jsquad_lora.model.sources.tiny import build_char_tokenizer
from jsquad_lora.prompts.templates import render_prompt

SENTENCES = [f"第{k}の文では、番号{k:03d}の品目が倉庫{k % 7}に置かれている。" for k in range(60)]
DOCUMENT = "".join(SENTENCES)
TOKENIZER = build_char_tokenizer([render_prompt(Question("x", "", DOCUMENT, "品目はどこ?", ("",), (0,)), "seed")])


def render(q: Question) -> str:
    return render_prompt(q, "seed")


def asked(answer: str, at: int | None = None, context: str = DOCUMENT) -> Question:
    start = context.index(answer) if at is None else at
    return Question("q", "", context, "品目はどこに置かれているか?", (answer,), (start,))


def bare_tokens(q: Question) -> int:
    return len(prompt_ids(TOKENIZER, render(Question(q.id, "", "", q.question, (), ()))))


def test_a_prompt_that_fits_is_one_window_the_question_itself():
    q = asked("番号010の品目", context=DOCUMENT[:300])
    exactly = len(prompt_ids(TOKENIZER, render(q)))
    (window,) = passage_windows(q, render, TOKENIZER, exactly, overlap=16)
    assert window.question is q and (window.start, window.index, window.count) == (0, 0, 1)
    assert len(passage_windows(q, render, TOKENIZER, exactly - 1, overlap=16)) == 2  # one token more: two windows


def test_windows_cover_the_document_overlap_and_fit():
    q = asked("番号030の品目")
    budget, overlap = 400, 48
    windows = passage_windows(q, render, TOKENIZER, budget, overlap)
    room = (budget - bare_tokens(q)) // ROOM_STEP * ROOM_STEP
    assert len(windows) > 3 and [w.index for w in windows] == list(range(len(windows)))
    assert {w.count for w in windows} == {len(windows)}
    assert windows[0].start == 0 and windows[-1].start + len(windows[-1].question.context) == len(DOCUMENT)
    for w, after in zip(windows, windows[1:]):
        end = w.start + len(w.question.context)
        assert DOCUMENT[w.start : end] == w.question.context and len(w.question.context) == room  # one char a token
        assert end - after.start == overlap  # consecutive windows share `overlap` tokens
    for w in windows:
        assert len(prompt_ids(TOKENIZER, render(w.question))) <= budget
        for text, start in zip(w.question.answers, w.question.answer_starts):
            assert w.question.context[start : start + len(text)] == text
    assert sum(w.answerable for w in windows) in (1, 2)  # inside the overlap of two windows, or one


def test_window_tokens_bound_each_window():
    q = asked("番号030の品目")
    wide = passage_windows(q, render, TOKENIZER, 400, 48)
    narrow = passage_windows(q, render, TOKENIZER, 400, 48, tokens=128)
    assert len(narrow) > len(wide) and {len(w.question.context) for w in narrow[:-1]} == {128}
    assert narrow[-1].start + len(narrow[-1].question.context) == len(DOCUMENT)


def test_an_answer_straddling_a_cut_is_whole_in_the_next_window_only():
    budget, overlap = 400, 48
    probe = asked("番号030の品目")
    first = passage_windows(probe, render, TOKENIZER, budget, overlap)[0]
    cut = len(first.question.context)  # window 0 ends here; window 1 starts `overlap` characters before it
    answer = DOCUMENT[cut - 5 : cut + 5]
    windows = passage_windows(asked(answer, at=cut - 5), render, TOKENIZER, budget, overlap)
    assert not windows[0].answerable  # the answer crosses its end: not wholly inside
    w = windows[1]
    assert w.question.answers == (answer,) and w.question.answer_starts == (cut - 5 - w.start,)
    assert [x.index for x in windows if x.answerable] == [1]


def test_an_answer_in_the_last_window_only():
    answer = SENTENCES[-1][:12]
    windows = passage_windows(asked(answer, at=len(DOCUMENT) - len(SENTENCES[-1])), render, TOKENIZER, 400, 48)
    assert [w.index for w in windows if w.answerable] == [len(windows) - 1]
    last = windows[-1].question
    assert last.context[last.answer_starts[0] :].startswith(answer)


def test_windows_that_cannot_overlap_as_asked_are_a_clear_error():
    with pytest.raises(InputError) as err:
        passage_windows(asked("番号030の品目"), render, TOKENIZER, 200, overlap=190)
    assert err.value.source == "model.window_overlap" and "lower model.window_overlap" in err.value.fix


def test_training_reads_long_passages_in_windows_holding_the_answer():
    q = asked("番号030の品目")
    short = asked("番号001の品目", context=DOCUMENT[:120])
    plain = encode_train_windows([short, q], render, TOKENIZER, 400, 48, negative_windows=False)
    windows = passage_windows(q, render, TOKENIZER, 400 - len("番号030の品目") - 1, 48)
    holding = [w for w in windows if w.answerable]
    assert plain.windowed == 1 and len(plain.examples) == 1 + len(holding) and plain.no_answer == 0
    for example in plain.examples:
        assert len(example.input_ids) <= 400
        said = [t for t in example.labels if t != -100]
        assert TOKENIZER.decode(said[:-1]) in ("番号030の品目", "番号001の品目") and said[-1] == TOKENIZER.eos_token_id
    negatives = encode_train_windows([short, q], render, TOKENIZER, 400, 48, negative_windows=True)
    assert len(negatives.examples) == 1 + len(windows) and negatives.no_answer == len(windows) - len(holding)
    eos_only = [e for e in negatives.examples if [t for t in e.labels if t != -100] == [TOKENIZER.eos_token_id]]
    assert len(eos_only) == negatives.no_answer
    assert negatives.passages[1:] == [w.question.context for w in windows]  # shared-prefix packing groups by these
    unanswerable = Question("n", "", DOCUMENT[:120], "何か?", (), ())
    (example,) = encode_train_windows([unanswerable], render, TOKENIZER, 400, 48, False).examples
    assert [t for t in example.labels if t != -100] == [TOKENIZER.eos_token_id]


def test_the_best_scored_window_answers_and_abstaining_needs_every_window():
    answers = [ScoredAnswer("", -0.1, 2.0), ScoredAnswer("倉庫3", -4.0, -1.0), ScoredAnswer("倉庫5", -2.5, -0.5)]
    assert best_window(answers) == 2 and abstain_margin(answers) == -1.0
    assert best_window([ScoredAnswer("a", -1.0), ScoredAnswer("b", -1.0)]) == 0  # the first of equals
    assert best_window([ScoredAnswer("", -0.1, 1.0), ScoredAnswer("", -0.2, 3.0)]) is None
    assert abstain_margin([ScoredAnswer("", -0.1, None)]) is None


def test_a_threshold_decides_from_margins_and_never_abstaining_answers():
    from jsquad_lora.evaluate.abstention import predictions_at

    has = Question("a", "", "x", "?", ("x",), (0,))
    nothing = Question("b", "", "y", "?", (), ())
    two = Question("c", "", "zw", "?", ("w",), (1,))
    per_question = [
        (has, [-1.0], [ScoredAnswer("x", -1.0)]),
        (nothing, [2.0], [ScoredAnswer("y", -2.0)]),
        (two, [0.5, -3.0], [ScoredAnswer("z", -0.5), ScoredAnswer("w", -0.9)]),
    ]
    assert predictions_at(0.0, per_question) == ["x", "", "w"]  # c: window 0 abstains, window 1 answers
    assert predictions_at(1.0, per_question) == ["x", "", "z"]  # both windows of c answer: the better score
    assert predictions_at(3.0, per_question) == ["x", "y", "z"]
    assert predictions_at(-5.0, per_question) == ["", "", ""]


def test_questions_without_an_answer_score_as_squad_v2():
    questions = [
        Question("a", "", "梅雨は東アジアの現象。", "どこ?", ("東アジア",), (3,)),
        Question("b", "", "梅雨は東アジアの現象。", "いつ?", (), ()),
        Question("c", "", "梅雨は東アジアの現象。", "誰?", (), ()),
    ]
    predictions = {"a": "東アジア", "b": "", "c": "梅雨"}
    for name in SCORERS:  # every scorer: an abstention is right on a question without an answer
        assert score_predictions(questions, predictions, name).exact_match == pytest.approx(200 / 3)
    split = answerability_scores(questions, predictions)
    assert split["has_ans"] == {"exact_match": 100.0, "f1": 100.0, "count": 1}
    assert split["no_ans"] == {"exact_match": 50.0, "f1": 50.0, "count": 2}
    assert answerability_scores(questions[:1], predictions) == {}  # JSQuAD: no split, the reference numbers only


def test_squad_v2_files_and_empty_answer_cells_are_questions_without_an_answer(tmp_path):
    squad = {
        "version": "v2.0",
        "data": [
            {
                "title": "梅雨",
                "paragraphs": [
                    {
                        "context": "梅雨 [SEP] 梅雨は東アジアの現象。",
                        "qas": [
                            {"id": "a", "question": "どこ?", "answers": [{"text": "東アジア", "answer_start": 8}]},
                            {"id": "b", "question": "いつ?", "answers": [], "is_impossible": True},
                            {"id": "c", "question": "誰?", "is_impossible": True, "plausible_answers": []},
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    assert [q.answerable for q in load_split(path).questions] == [True, False, False]
    table = tmp_path / "qa.csv"
    table.write_text("context,question,answer\n梅雨は東アジアの現象。,どこ?,東アジア\n梅雨は東アジアの現象。,いつ?,\n")
    from jsquad_lora.data.formats import read_split

    assert [q.answers for q in read_split(table, "train").questions] == [("東アジア",), ()]
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"a": "東アジア", "b": "", "c": "梅雨"}, ensure_ascii=False), encoding="utf-8")


def test_score_and_stats_with_questions_without_an_answer(tmp_path, capsys):
    test_squad_v2_files_and_empty_answer_cells_are_questions_without_an_answer(tmp_path)
    assert main(["score", str(tmp_path / "v2.json"), str(tmp_path / "predictions.json")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["count"] == 3 and scores["exact_match"] == pytest.approx(200 / 3)
    assert scores["has_ans"]["exact_match"] == 100.0 and scores["no_ans"] == {
        "exact_match": 50.0,
        "f1": 50.0,
        "count": 2,
    }
    assert main(["stats", str(tmp_path / "v2.json")]) == 0
    assert "2 questions without an answer" in capsys.readouterr().out


def test_a_windowed_evaluation_resumes_only_complete_questions(tmp_path):
    out = tmp_path / "predictions-after.jsonl"
    windows = passage_windows(asked("番号030の品目"), render, TOKENIZER, 400, 48)
    log = partial_log(out, 0)
    rows = [_window_row(w, ScoredAnswer(f"a{w.index}", -float(w.index), 0.5)) for w in windows]
    other = passage_windows(Question("r", "", DOCUMENT, "?", (), ()), render, TOKENIZER, 400, 48)
    rows += [_window_row(other[0], ScoredAnswer("", -0.1, 1.0))]  # one window of several: not done
    log.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + '{"id": "r", "win', encoding="utf-8"
    )
    done, details = _answered(out, {"q", "r"})
    assert done == {"q": "a0"} and details["q"]["windows"] == len(windows) and details["q"]["window"] == 0
    assert [a[1] for a in details["q"]["window_answers"]] == [f"a{k}" for k in range(len(windows))]


# end to end on a tiny model: a run trained on long documents and questions without answers

LONG_RUN = [
    *TINY_TEST,
    "model.max_length=384",
    "model.window_overlap=64",
    "eval.abstain=true",
    "train.negative_windows=true",
    "eval.side_check=false",
    "eval.before=false",
    "data.eval_limit=12",
    "data.train_limit=null",
    "data.train_sample=60",
]


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    from conftest import SHARED

    work = tmp_path_factory.mktemp("documents")
    dev = str(SHARED / "valid-v1.3.json")
    assert main(["data", "build-long", dev, "--output", str(work / "long.json")]) == 0
    assert main(["data", "build-unanswerable", dev, "--output", str(work / "unanswerable.json")]) == 0
    return work


@pytest.fixture(scope="module")
def long_run(documents):
    out = documents / "run"
    data = [f"data.train={documents / 'unanswerable.json'}", f"data.eval={documents / 'long.json'}"]
    assert main(["run", "--output", str(out), *LONG_RUN, *data, "train.abstain_holdout=0.25"]) == 0
    return out


@needs_data()
def test_a_run_on_long_documents_and_questions_without_answers(long_run):
    metrics = json.loads((long_run / "metrics.json").read_text())
    assert metrics["train"]["no_answer_examples"] > 0  # the unanswerable mix teaches abstaining
    assert metrics["eval"]["windowed_questions"] == metrics["eval"]["questions"]  # every long document: windows
    tuned = metrics["abstention"]  # tuned on held-out training articles, then used by the evaluation and ask
    assert tuned["held_out_questions"] > 0 and tuned["em_at_threshold"] >= tuned["em_at_zero"]
    from jsquad_lora.tuned.loaded import load_run_model

    assert load_run_model(long_run).cfg.eval.abstain_threshold == tuned["threshold"]
    rows = [json.loads(line) for line in (long_run / "predictions-after.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["windows"] > 1 and len(row["window_answers"]) == row["windows"]
        assert row["abstained"] == (row["prediction"] == "") == (row["window"] is None)
        if not row["abstained"]:
            start, text, score = row["window_answers"][row["window"]]
            assert text == row["prediction"] and score == row["score"] == max(
                s for _, t, s in row["window_answers"] if t
            )


@needs_data()
def test_abstentions_score_as_no_ans_and_ask_serve_say_null(documents, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [
        *LONG_RUN,
        f"data.train={documents / 'unanswerable.json'}",
        f"data.eval={documents / 'unanswerable.json'}",
        "data.eval_limit=null",
        "data.eval_sample=16",
        "eval.abstain_threshold=-1000",  # abstain wherever abstaining is allowed: every answer is null
    ]
    assert main(["run", "--output", str(out), *overrides]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    after = metrics["after"]
    assert after["no_ans"]["exact_match"] == 100.0 and after["has_ans"]["exact_match"] == 0.0
    assert after["no_ans"]["count"] + after["has_ans"]["count"] == after["jglue"]["count"]
    document = (DOCUMENT * 4)[:10_000]
    (tmp_path / "doc.txt").write_text(document, encoding="utf-8")
    argv = ["ask", "--run", str(out), "--context-file", str(tmp_path / "doc.txt"), "--question", "品目は?", "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["answer"] is None and found["abstained"] and found["windows"] > 5 and "no answer" in found["reason"]
    from fastapi.testclient import TestClient

    from jsquad_lora.tuned.loaded import load_run_model
    from jsquad_lora.tuned.serve import create_app

    app = create_app(load_run_model(out), run_name="tiny", default_decoding="extractive", host="127.0.0.1", wait_s=0)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        reply = client.post("/v1/answer", json={"context": document, "question": "品目は?"}).json()
    assert reply["answer"] is None and reply["reason"] == found["reason"] and reply["windows"] == found["windows"]


@needs_data()
def test_ask_reads_a_long_document_in_windows_and_answers_a_span(long_run, tmp_path, capsys):
    document = (DOCUMENT * 4)[:10_000]
    argv = ["ask", "--run", str(long_run), "--context", document, "--question", "番号030の品目はどこ?", "--json"]
    capsys.readouterr()
    assert main(argv + ["--decoding", "extractive"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["windows"] > 5
    if found["answer"] is not None:  # a tiny model may abstain; when it answers, it is a span of the document
        assert document[found["start"] : found["end"]] == found["answer"]
