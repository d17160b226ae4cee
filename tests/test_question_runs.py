"""A question-generation run (task=question) used: `ask --answer` prints the question the run writes, alone, for
the prompt it was evaluated with, `serve` writes it at POST /v1/question, and each refuses the other task's
input (ask's --question / --answer, the /v1/answer and /v1/question routes) with a message naming the right one.
An answer run is served as before. Tiny models: seconds."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import SHARED, needs_data
from test_generate import QUESTION_TASK, TINY
from test_serve import post, running

from jsquad_lora.cli import main
from jsquad_lora.data.formats import read_split
from jsquad_lora.data.question import as_question_task
from jsquad_lora.errors import InputError
from jsquad_lora.generate.decoding import decoding_config
from jsquad_lora.generate.greedy import generate_answers
from jsquad_lora.tuned.loaded import load_run_model
from jsquad_lora.tuned.serve import create_app

pytestmark = needs_data()


#: a question run that barely trains: near its random weights the model writes 24 arbitrary characters for a
#: prompt (trained on 16 questions it writes none), so a question is there to compare
UNTRAINED = ["train.learning_rate=1e-9"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny task=question run and a tiny task=answer run."""
    root = tmp_path_factory.mktemp("question-runs")
    assert main(["run", "--output", str(root / "qg"), *TINY, *QUESTION_TASK, *UNTRAINED]) == 0
    assert main(["run", "--output", str(root / "qa"), *TINY]) == 0
    return root / "qg", root / "qa"


@pytest.fixture(scope="module")
def loaded(runs):
    return load_run_model(runs[0]), load_run_model(runs[1])


@pytest.fixture(scope="module")
def expected(runs, loaded):
    """(passage, answer, question) of the question run's dev questions: the question is the greedy generation,
    alone, of the prompt the run was evaluated with (`as_question_task`: the first answer in the prompt)."""
    run = loaded[0]
    dev = read_split(SHARED / "valid-v1.3.json", "valid").by_id()
    rows = [json.loads(line) for line in (runs[0] / "predictions-after.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    out = []
    for row in rows:
        q = as_question_task(dev[row["id"]])
        prompt = run.render(q)
        assert f"文章:{q.context}" in prompt and prompt.endswith(f"回答:{dev[row['id']].answers[0]}<NL>システム: ")
        [question] = generate_answers(run.model, run.tokenizer, [prompt], [q.context], decoding_config(run.cfg))
        assert question  # not empty
        out.append((q.context, q.question, question))
    return out


def ask(capsys, *argv):
    code = main(["ask", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ask_prints_the_runs_question(runs, expected, capsys):
    context, answer, question = expected[0]
    assert ask(capsys, "--run", runs[0], "--context", context, "--answer", answer)[:2] == (0, question + "\n")
    code, out, _ = ask(capsys, "--run", runs[0], "--context", context, "--answer", answer, "--json")
    assert code == 0 and json.loads(out) == {"question": question, "task": "question"}


def test_ask_refuses_the_other_tasks_input(runs, expected, capsys):
    context, answer, _ = expected[0]
    code, out, err = ask(capsys, "--run", runs[0], "--context", context, "--question", "どこか。")
    assert (code, out) == (2, "") and "Traceback" not in err
    assert "task=question run" in err and "takes --answer, not --question" in err and "fix:" in err
    code, out, err = ask(capsys, "--run", runs[1], "--context", context, "--answer", answer)
    assert (code, out) == (2, "") and "task=answer run" in err and "takes --question, not --answer" in err
    code, _, err = ask(capsys, "--run", runs[0], "--context", context, "--answer", answer, "--decoding", "extractive")
    assert code == 2 and "greedily" in err
    code, _, err = ask(capsys, "--run", runs[0], "--context", context, "--answer", " ")
    assert code == 2 and "empty passage or answer" in err
    # tiny-cpu's max_length is 640 character tokens, 24 of them for the question: 700 characters do not fit
    code, _, err = ask(capsys, "--run", runs[0], "--context", "あ" * 700, "--answer", "あ")
    assert code == 2 and "--context" in err and "task=question reads a passage in one prompt" in err
    with pytest.raises(SystemExit) as info:  # one of --question, --answer is required, not both
        main(["ask", "--run", str(runs[0]), "--context", context, "--question", "q", "--answer", "a"])
    assert info.value.code == 2


def test_loaded_runs_refuse_the_other_task(loaded, expected):
    (qg, qa), (context, answer, question) = loaded, expected[1]
    assert qg.write_question(context, answer) == question
    prompt = qg.question_prompt(context, answer)  # the run's prompt: the passage, then the answer (seed template)
    assert f"文章:{context}" in prompt and prompt.endswith(f"回答:{answer}<NL>システム: ")
    with pytest.raises(InputError, match="task=question run writes questions; it does not answer them"):
        qg.answer(context, "どこか。")
    with pytest.raises(InputError, match="task=answer run answers questions; it does not write them"):
        qa.write_question(context, answer)


@pytest.fixture(scope="module")
def qg_server(loaded):
    # wait_s: requests sent together reach the worker before it starts a batch, so they share it
    run = loaded[0]
    app = create_app(run, run_name="qg", default_decoding=run.cfg.eval.decoding, task=run.cfg.task, wait_s=0.5)
    with running(app) as url:
        yield url


def test_serve_writes_questions_at_v1_question(qg_server, expected):
    with ThreadPoolExecutor(len(expected)) as pool:
        replies = list(
            pool.map(lambda e: post(qg_server + "/v1/question", {"context": e[0], "answer": e[1]}), expected)
        )
    assert [code for code, _ in replies] == [200] * len(expected)
    assert [r["question"] for _, r in replies] == [q for _, _, q in expected]  # batched, each as alone
    assert max(r["batch"] for _, r in replies) > 1 and all(r["seconds"] >= 0 for _, r in replies)
    with urllib.request.urlopen(qg_server + "/v1/health", timeout=10) as response:
        assert json.loads(response.read())["task"] == "question"


def test_serve_checks_v1_question_fields_as_v1_answer(qg_server, expected):
    context, answer, _ = expected[0]
    for body, status, field, said in [
        ({"context": context}, 422, "answer", "missing field 'answer'"),
        ({"context": context, "answer": answer, "question": "?"}, 422, "question", "unknown field 'question'"),
        ({"context": context, "answer": 3}, 422, "answer", "answer must be a string"),
        ({"context": context, "answer": " "}, 422, "context/answer", "empty passage or answer"),
        ({"context": "あ" * 20_001, "answer": answer}, 413, "context", "context too long"),
        ({"context": "あ" * 700, "answer": "あ"}, 422, "context", "task=question reads a passage in one prompt"),
    ]:
        code, reply = post(qg_server + "/v1/question", body)
        assert (code, reply["field"]) == (status, field) and said in reply["error"], (body, reply)
        assert set(reply) == {"error", "field", "fix"}
    code, reply = post(qg_server + "/v1/question", b"[1]")
    assert code == 422 and '"answer"' in reply["fix"]


def test_each_route_refuses_the_other_task_with_400(qg_server, loaded, expected):
    context, answer, question = expected[2]
    code, reply = post(qg_server + "/v1/answer", {"context": context, "question": "どこか。"})
    assert code == 400 and "task=question" in reply["error"] and "/v1/question" in reply["fix"]
    qa = loaded[1]
    app = create_app(qa, run_name="qa", default_decoding=qa.cfg.eval.decoding, task=qa.cfg.task, wait_s=0)
    with running(app) as url:
        code, reply = post(url + "/v1/question", {"context": context, "answer": answer})
        assert code == 400 and "task=answer" in reply["error"] and "/v1/answer" in reply["fix"]
        # the answer run is served as before
        code, reply = post(url + "/v1/answer", {"context": context, "question": question})
        assert code == 200 and reply["answer"] == qa.answer(context, question)
        assert reply["decoding"] == qa.cfg.eval.decoding and reply["windows"] == 1
        with urllib.request.urlopen(url + "/v1/health", timeout=10) as response:
            assert json.loads(response.read())["task"] == "answer"


def test_page_writes_a_question_in_chromium(qg_server, expected, chromium):
    context, answer, question = expected[3]
    page = chromium.new_page()
    try:
        page.goto(qg_server + "/")
        assert page.text_content("label[for=question]") == "Answer" and page.text_content("#ask") == "Write a question"
        assert page.is_hidden("#decoding")  # a question is written greedily
        page.fill("#context", context)
        page.fill("#question", answer)
        page.click("#ask")
        mark = page.wait_for_selector("#passage mark", timeout=30_000)
        assert mark.text_content() == answer  # the answer marked in the passage
        assert page.text_content("#answer") == question
        assert page.text_content("#passage") == context and page.text_content("#error") == ""
    finally:
        page.close()


def test_serve_command_serves_a_question_run(runs, expected, monkeypatch):
    import uvicorn

    from jsquad_lora.tuned.serve import serve

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    serve(runs[0])  # loads the run, writes a first question (the slow first generation), builds the app
    context, answer, question = expected[0]
    with running(apps[0]) as url:
        with urllib.request.urlopen(url + "/v1/health", timeout=10) as response:
            assert json.loads(response.read())["task"] == "question"
        assert post(url + "/v1/question", {"context": context, "answer": answer}) == (
            200,
            {"question": question, "batch": 1, "seconds": pytest.approx(0, abs=60)},
        )
        with urllib.request.urlopen(url + "/", timeout=10) as response:
            assert "Write a question" in response.read().decode()
