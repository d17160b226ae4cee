"""`eval.backend=openai`: a chat endpoint scored like a run, against real servers on this machine (never a mock).

- this tool's `serve` on a tiny run: the same answers as the run's own local greedy evaluation, the token usage
  summed, a resume after a kill -9, and `report`'s paired comparison of the two runs;
- a standard-library server that answers 429 (Retry-After: 0) before every 200: the client retries and the run
  succeeds, with the request the template defines (one user message, or the `chat` turns with few-shot examples);
- a server that fails one question for good: recorded as failed (never as an answer), exit 2, and the same command
  again asks only that question;
- a closed port: a clear error, exit 2, nothing written as an answer;
- a base URL outside this machine: refused at config load (exit 2, naming eval.openai.allow_remote), no request.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import TINY_MODEL, needs_data
from test_resume import kill_when
from test_serve import running

from jsquad_lora.cli import main
from jsquad_lora.config.load import load_config
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.data.write import write_squad_json
from jsquad_lora.errors import InputError
from jsquad_lora.prompts.fewshot import make_renderer, select_fewshot
from jsquad_lora.prompts.templates import SEED_INSTRUCTION, render_prompt
from jsquad_lora.tuned.loaded import load_run_model
from jsquad_lora.tuned.serve import create_app
from jsquad_lora.util.jsonio import read_jsonl_prefix

pytestmark = needs_data()
N = 8
MAX_NEW_TOKENS = 12
#: a tiny run that learns N questions by heart (trained and evaluated on them): greedy answers that differ from
#: question to question, so that an answer given to the wrong question shows
MEMORISED = [
    *TINY_MODEL,
    "train.epochs=40",
    "train.batch_size=4",
    "train.synthetic_per_passage=0",
    "train.prompt_loss_weight=0",
    "eval.before=false",
    "eval.side_check=false",
    "eval.decoding=greedy",
    "eval.dtype=float32",
    f"eval.max_new_tokens={MAX_NEW_TOKENS}",
]
#: rinna's dialogue as a chat template: the `chat` template's turns, rendered by it, are the seed prompt exactly
SEED_AS_CHAT = (
    "{% for m in messages %}{% if m.role == 'user' %}ユーザー: {% else %}システム: {% endif %}"
    "{{ m.content | replace('\\n', '<NL>') }}<NL>{% endfor %}{% if add_generation_prompt %}システム: {% endif %}"
)
USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The first N questions of JSQuAD's test split as a SQuAD JSON file, and the questions as read back from it."""
    path = tmp_path_factory.mktemp("data") / "questions.json"
    write_squad_json(path, load_split(resolve_split(None, "test")).questions[:N])
    return path, load_split(path).questions


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, data):
    """The tiny run, evaluated locally after tuning (greedy, float32) on its own training questions."""
    out = tmp_path_factory.mktemp("tuned") / "tuned"
    assert main(["run", "--output", str(out), *MEMORISED, f"data.train={data[0]}", f"data.eval={data[0]}"]) == 0
    return out


@pytest.fixture(scope="module")
def chat_run(tuned):
    """The tuned run as `serve` loads it, its prompt format written as a chat template: a chat request's turns
    become the very prompt the run was tuned and evaluated on."""
    run = load_run_model(tuned)
    tokenizer = copy.deepcopy(run.tokenizer)
    tokenizer.chat_template = SEED_AS_CHAT
    cfg = dataclasses.replace(run.cfg, prompt=dataclasses.replace(run.cfg.prompt, template="chat"))
    return dataclasses.replace(run, cfg=cfg, tokenizer=tokenizer, render=make_renderer(cfg, tokenizer, ()))


@pytest.fixture(scope="module")
def served(chat_run):
    # wait_s: each request waits a little for companions, so that a run at concurrency 1 takes a few seconds
    app = create_app(chat_run, run_name="tiny", default_decoding="greedy", wait_s=0.25)
    with running(app) as url:
        yield url


def endpoint_args(out, url: str, data_file, *extra) -> list[str]:
    """`evaluate` of the endpoint at `url` on the questions of `data_file`; model.name names weights that exist
    nowhere: the evaluation must not load a model."""
    return [
        "evaluate",
        "--output",
        str(out),
        "--config",
        "tiny-cpu",
        "model.name=/nonexistent/weights",
        f"data.train={data_file}",
        f"data.eval={data_file}",
        "eval.backend=openai",
        "eval.decoding=greedy",
        f"eval.max_new_tokens={MAX_NEW_TOKENS}",
        f"eval.openai.base_url={url}/v1",
        "eval.openai.model=tiny",
        "prompt.template=chat",
        *extra,
    ]


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def summed(usages) -> dict:
    return {k: sum(u[k] for u in usages) for k in USAGE}


def test_serve_through_the_endpoint_answers_as_the_runs_local_evaluation(tmp_path, tuned, chat_run, served, data):
    questions = data[1]
    local = {row["id"]: row["prediction"] for row in rows_of(tuned / "predictions-after.jsonl")}
    expected = [local[q.id] for q in questions]
    assert len(set(expected)) > 2  # answers that tell the questions apart
    tuned_render = load_run_model(tuned).render
    assert [chat_run.render(q) for q in questions] == [tuned_render(q) for q in questions]
    out = tmp_path / "chat"
    assert main(endpoint_args(out, served, data[0], "eval.openai.concurrency=4")) == 0
    rows = rows_of(out / "predictions-before.jsonl")
    # serve's chat route decodes greedily in float32 from the same prompt, one request at a time, and cuts its text
    # at the same stop strings; the local evaluation batched its prompts, which gives the same answers in float32
    # (tests/test_generation.py). A tie between two logits could still differ: none here.
    assert [row["id"] for row in rows] == [q.id for q in questions]
    assert [row["prediction"] for row in rows] == expected
    usage = [chat_run.usage(chat_run.render(q), a) for q, a in zip(questions, expected)]
    assert [row["usage"] for row in rows] == usage
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["usage"] == {**summed(usage), "questions_without_usage": 0}
    assert "cost" not in metrics  # no prices given
    assert metrics["endpoint"] == {"base_url": f"{served}/v1", "model": "tiny", "api": "chat.completions"}
    assert metrics["model"] == "tiny" and "base_model" not in metrics
    tuned_metrics = json.loads((tuned / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["before"]["jglue"] == tuned_metrics["after"]["jglue"]
    assert metrics["eval_before"]["generated"] == N
    assert not (out / "base").exists() and not (out / "adapter").exists()  # no model was built or loaded
    assert (out / "report.md").is_file()
    # the report pairs the two runs on their questions: the same answers, ΔEM 0
    assert main(["report", str(tuned), str(out), "--output", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    paired = [line for line in report.splitlines() if "tuned (after)" in line and "chat (before)" in line]
    assert paired and "+0.00" in paired[0]


def test_a_killed_evaluation_resumes_and_asks_only_the_rest(tmp_path, tuned, chat_run, served, data):
    questions = data[1]
    out = tmp_path / "chat"
    partial = out / "predictions-before.partial.jsonl"
    argv = endpoint_args(out, served, data[0], "eval.openai.concurrency=1")
    logged = lambda: partial.is_file() and partial.read_bytes().count(b"\n") >= 3  # noqa: E731
    assert kill_when(argv, logged), "the evaluation ended before it could be killed"
    kept = len(read_jsonl_prefix(partial))  # what the next try keeps (a torn last line dropped)
    assert 3 <= kept < N and not (out / "predictions-before.jsonl").exists()
    assert main(argv) == 0
    local = {row["id"]: row["prediction"] for row in rows_of(tuned / "predictions-after.jsonl")}
    rows = rows_of(out / "predictions-before.jsonl")
    assert [(row["id"], row["prediction"]) for row in rows] == [(q.id, local[q.id]) for q in questions]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["eval_before"]["generated"] == N - kept  # nothing asked twice, nothing skipped
    usage = [chat_run.usage(chat_run.render(q), local[q.id]) for q in questions]
    assert metrics["usage"] == {**summed(usage), "questions_without_usage": 0}  # the first try's tokens too
    assert not partial.exists()


class Scripted:
    """A chat endpoint written with the standard library: it records every request and answers per question (the
    text after the last "質問:" of the last message) with `statuses(question, attempt)` before a 200 whose reply is
    the question's first 4 characters, padded and followed by a stop string and more text."""

    def __init__(self, statuses=lambda question, attempt: 200):
        self.statuses, self.requests, self.lock = statuses, [], threading.Lock()

    def asked(self, question: str) -> list[tuple[float, dict]]:
        return [(t, body) for t, body in self.requests if self.question_of(body) == question]

    @staticmethod
    def question_of(body: dict) -> str:
        text = body["messages"][-1]["content"].rsplit("質問:", 1)[1]
        return text.split("<NL>")[0].split("\n")[0]

    @staticmethod
    def reply(question: str) -> str:
        return f"  {question[:4]}<NL>余計な続き\n"

    @contextmanager
    def serving(self, address: str = "127.0.0.1"):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = endpoint.question_of(body)
                with endpoint.lock:
                    attempt = len(endpoint.asked(question))
                    endpoint.requests.append((time.time(), body))
                status = endpoint.statuses(question, attempt)
                if status != 200:
                    self.send(status, {"error": {"message": "busy", "type": "server_error"}}, {"Retry-After": "0"})
                    return
                prompt = sum(len(m["content"]) for m in body["messages"])
                usage = {"prompt_tokens": prompt, "completion_tokens": 3, "total_tokens": prompt + 3}
                message = {"role": "assistant", "content": endpoint.reply(question)}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                reply = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"]}
                self.send(200, {**reply, "choices": [choice], "usage": usage})

            def send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload, ensure_ascii=False).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer((address, 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://{address}:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


def chat_turn(q) -> dict:
    """The `chat` template's user turn, by its definition (templates.py)."""
    return {"role": "user", "content": f"{SEED_INSTRUCTION}\n文章:{q.context}\n質問:{q.question}"}


@pytest.mark.parametrize("template", ["seed", "chat"])
def test_a_rate_limited_endpoint_is_retried_and_asked_as_the_template_says(tmp_path, data, caplog, template):
    caplog.set_level(logging.INFO)
    path, questions = data
    endpoint = Scripted(lambda question, attempt: 429 if attempt == 0 else 200)
    out = tmp_path / "chat"
    prices = ["eval.openai.prompt_price_per_million=2.5", "eval.openai.completion_price_per_million=10"]
    extra = ["eval.openai.concurrency=2", "eval.openai.max_retries=2", "eval.openai.model=m", *prices]
    extra += ["prompt.fewshot=1"] if template == "chat" else ["prompt.template=seed"]
    with endpoint.serving() as url:
        assert main(endpoint_args(out, url, path, *extra)) == 0
    for q in questions:
        asked = endpoint.asked(q.question)
        assert len(asked) == 2 and asked[0][1] == asked[1][1]  # a 429, then the same request again
        body = asked[0][1]
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("m", 0, MAX_NEW_TOKENS)
        if template == "seed":  # the rendered prompt as one user message
            assert body["messages"] == [{"role": "user", "content": render_prompt(q, "seed")}]
        else:  # the few-shot example as earlier turns, then the question's turn
            shot = select_fewshot(questions, 1, 1234, q)[0]
            assert body["messages"] == [
                chat_turn(shot),
                {"role": "assistant", "content": shot.answers[0]},
                chat_turn(q),
            ]
    rows = rows_of(out / "predictions-before.jsonl")
    # the reply cut at the first stop string (<NL>), whitespace stripped, as every backend cuts an answer
    assert [row["prediction"] for row in rows] == [q.question[:4].strip() for q in questions]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    prompt = sum(sum(len(m["content"]) for m in endpoint.asked(q.question)[0][1]["messages"]) for q in questions)
    assert metrics["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 3 * N,
        "total_tokens": prompt + 3 * N,
        "questions_without_usage": 0,
    }
    assert metrics["cost"]["total"] == pytest.approx(prompt * 2.5 / 1e6 + 3 * N * 10 / 1e6)
    # the run says where the data goes before the first request
    said = [r for r in caplog.records if "questions and their passages are sent to " + url in r.getMessage()]
    assert said and said[0].created <= min(t for t, _ in endpoint.requests)


def test_a_question_that_fails_after_its_retries_is_recorded_and_asked_again(tmp_path, data, capsys):
    path, questions = data
    broken = {"on": True}
    first = questions[0].question
    endpoint = Scripted(lambda question, attempt: 500 if broken["on"] and question == first else 200)
    out = tmp_path / "chat"
    with endpoint.serving() as url:
        argv = endpoint_args(out, url, path, "eval.openai.max_retries=1", "eval.openai.model=m")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"1 of {N} questions got no answer after 1 retries" in err and "run the same command again" in err
        assert [(r["id"], r["error"][:4]) for r in rows_of(out / "failed-before.jsonl")] == [(questions[0].id, "500:")]
        assert not (out / "predictions-before.jsonl").exists()
        logged = read_jsonl_prefix(out / "predictions-before.partial.jsonl")
        assert sorted(r["id"] for r in logged) == sorted(q.id for q in questions[1:])  # never an empty answer
        metrics = out / "metrics.json"  # none yet, or one that does not say finished
        assert not metrics.exists() or json.loads(metrics.read_text()).get("finished") is not True
        assert len(endpoint.asked(first)) == 2  # the first try and its one retry
        broken["on"] = False
        assert main(argv) == 0
    assert len(endpoint.asked(first)) == 3 and all(len(endpoint.asked(q.question)) == 1 for q in questions[1:])
    assert not (out / "failed-before.jsonl").exists()
    assert [r["prediction"] for r in rows_of(out / "predictions-before.jsonl")] == [
        q.question[:4].strip() for q in questions
    ]
    assert json.loads((out / "metrics.json").read_text())["eval_before"]["generated"] == 1


def test_a_server_that_is_down_is_a_clear_error_and_nothing_is_written(tmp_path, data, capsys):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "chat"
    start = time.monotonic()
    assert main(endpoint_args(out, f"http://127.0.0.1:{port}", data[0], "eval.openai.max_retries=0")) == 2
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert f"eval.openai.base_url=http://127.0.0.1:{port}/v1" in err and "cannot reach the endpoint" in err
    assert "start the server" in err and "run the same command again" in err
    assert not (out / "predictions-before.jsonl").exists()
    assert read_jsonl_prefix(out / "predictions-before.partial.jsonl") == []
    # an endpoint is not trained: `train` is refused before any request
    argv = endpoint_args(tmp_path / "train", f"http://127.0.0.1:{port}", data[0])
    assert main(["train", *argv[1:]]) == 2
    assert "no local model to train" in capsys.readouterr().err


def _outside_address() -> str | None:
    """This machine's address on its default route (not loopback), or None: a UDP connect sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_a_base_url_outside_this_machine_is_refused_before_any_request(tmp_path, data, capsys):
    base = ["eval.backend=openai", "eval.decoding=greedy", "eval.openai.model=m"]
    for url in ("http://127.0.0.1:8080/v1", "http://127.3.2.1/v1", "http://localhost:1/v1", "http://[::1]:9/v1"):
        assert load_config("tiny-cpu", [*base, f"eval.openai.base_url={url}"]).eval.openai.base_url == url
    for url in (
        "https://api.openai.com/v1",
        "http://0.0.0.0:8080/v1",
        "http://10.0.0.1/v1",
        "http://localhost.evil/v1",
    ):
        with pytest.raises(InputError, match="eval.openai.allow_remote"):
            load_config("tiny-cpu", [*base, f"eval.openai.base_url={url}"])
        assert load_config("tiny-cpu", [*base, f"eval.openai.base_url={url}", "eval.openai.allow_remote=true"])
    out = tmp_path / "chat"
    assert main(endpoint_args(out, "https://api.openai.com", data[0])) == 2
    err = capsys.readouterr().err
    assert "eval.openai.allow_remote" in err and "api.openai.com" in err
    assert not out.exists()  # refused when the config loaded: no run directory, no request
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no address outside loopback to serve on")
    endpoint = Scripted()
    with endpoint.serving("0.0.0.0") as url:
        port = url.rsplit(":", 1)[1]
        outside = f"http://{address}:{port}"
        assert main(endpoint_args(out, outside, data[0], "eval.openai.model=m")) == 2
        assert endpoint.requests == [] and not out.exists()
        assert main(endpoint_args(out, outside, data[0], "eval.openai.model=m", "eval.openai.allow_remote=true")) == 0
        assert len(endpoint.requests) == N  # the same server, asked once allowed
