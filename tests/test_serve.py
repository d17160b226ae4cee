"""`jsquad-lora serve` on a tiny run, over real HTTP (uvicorn on a free localhost port): answers equal the
run's evaluation and one-at-a-time answers, concurrent requests share batches, bad requests get a 4xx
JSON error and the server goes on, a full queue is a 503, and the page answers in headless Chromium."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from conftest import TINY_TEST, needs_data

from jsquad_lora.cli import build_parser, main
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.data.question import Question
from jsquad_lora.encoding.windows import Window
from jsquad_lora.errors import InputError
from jsquad_lora.generate.decoding import ScoredAnswer
from jsquad_lora.tuned.ask import MAX_ASK_CONTEXT_CHARS, MAX_ASK_QUESTION_CHARS
from jsquad_lora.tuned.loaded import load_run_model
from jsquad_lora.tuned.serve import create_app
from jsquad_lora.tuned.serving import MAX_BODY_BYTES, PAGE_POLICY, Batcher, Pending, RequestError

pytestmark = needs_data()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "tiny"
    # evaluated in float32, the dtype the server answers in (eval.dtype=auto may pick bfloat16)
    assert main(["run", "--output", str(out), *TINY_TEST, "eval.dtype=float32"]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_run_model(run_dir)


@contextmanager
def running(app, address: str = "127.0.0.1"):
    """`app` served by uvicorn in a thread on a free port of `address`; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    sock.bind((address, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(address, f"[{address}]" if ":" in address else address)
    try:
        yield f"http://{shown}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@pytest.fixture(scope="module")
def server(loaded):
    # wait_s: requests sent together reach the worker before it starts a batch, so they share it
    app = create_app(loaded, run_name="tiny", default_decoding=loaded.cfg.eval.decoding, wait_s=0.5)
    with running(app) as url:
        yield url


def post(url: str, body: bytes | dict, content_type: str = "application/json", headers: dict | None = None):
    """(status, JSON body) of a POST; error statuses too."""
    data = json.dumps(body, ensure_ascii=False).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def dev_questions(n: int):
    return load_split(resolve_split(None, "valid")).questions[:n]


def test_concurrent_answers_equal_one_at_a_time_and_the_runs(server, loaded, run_dir):
    questions = dev_questions(8)
    bodies = [
        {"context": q.context, "question": q.question, "decoding": "greedy" if i % 4 == 3 else "extractive"}
        for i, q in enumerate(questions)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: post(server + "/v1/answer", b), bodies))
    assert [status for status, _ in replies] == [200] * len(bodies)
    alone = [loaded.answer(b["context"], b["question"], b["decoding"]) for b in bodies]
    assert [r["answer"] for _, r in replies] == alone
    assert [r["decoding"] for _, r in replies] == [b["decoding"] for b in bodies]
    assert max(r["batch"] for _, r in replies) > 1  # requests shared a generation call
    # the run evaluated these questions in extractive decoding (tiny-cpu's eval.decoding), in float32 too
    evaluated = {row["id"]: row["prediction"] for row in map(json.loads, (run_dir / "predictions-after.jsonl").open())}
    for q, body, (_, reply) in zip(questions, bodies, replies):
        if body["decoding"] == "extractive":
            assert reply["answer"] == evaluated[q.id]
            assert q.context[reply["start"] : reply["end"]] == reply["answer"]  # a span of the passage
        assert reply["seconds"] >= 0 and reply["passage_truncated"] is False


BIG = json.dumps({"context": "あ" * 20_001, "question": "?"}).encode()
BAD_REQUESTS = [
    # (body, content type, status, field)
    (b'{"context": "a", "question": ', "application/json", 400, None),
    (b"\xff\xfe", "application/json", 400, None),
    (b"[1, 2]", "application/json", 422, None),
    (b'{"context": "a"}', "application/json", 422, "question"),
    (b'{"context": 1, "question": "q"}', "application/json", 422, "context"),
    (b'{"context": "a", "question": "q", "passage": "x"}', "application/json", 422, "passage"),
    (b'{"context": "a", "question": "q", "decoding": "beam"}', "application/json", 422, "decoding"),
    (b'{"context": "a", "question": "q", "decoding": 3}', "application/json", 422, "decoding"),
    (b'{"context": "a", "question": "q", "context": "b"}', "application/json", 400, None),  # duplicate key
    (b'{"context": " ", "question": "q"}', "application/json", 422, "context/question"),
    (b'{"context": "\\ud800", "question": "q"}', "application/json", 422, "context"),
    (BIG, "application/json", 413, "context"),
    (b'{"context": "' + b"a" * MAX_BODY_BYTES + b'", "question": "q"}', "application/json", 413, None),
    (b'{"context": "a", "question": "q"}', "text/plain", 415, None),
]


def test_bad_requests_get_a_json_error_and_the_server_goes_on(server):
    for body, content_type, status, field in BAD_REQUESTS:
        code, reply = post(server + "/v1/answer", body, content_type)
        assert code == status, (body[:80], reply)
        assert isinstance(reply["error"], str) and reply["error"] and reply["field"] == field, (body[:80], reply)
    code, reply = post(server + "/v1/answer", {"context": "梅雨は東アジアの気象現象である。", "question": "どこ?"})
    assert code == 200 and reply["answer"] in "梅雨は東アジアの気象現象である。"


def test_other_routes(server):
    with urllib.request.urlopen(server + "/v1/health", timeout=10) as response:
        assert json.loads(response.read()) == {
            "status": "ok",
            "run": "tiny",
            "decoding": "extractive",
            "modes": ["greedy", "extractive", "span"],
            "task": "answer",
        }
    for path, method, status in (("/nowhere", "GET", 404), ("/v1/answer", "GET", 405)):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(server + path, method=method), timeout=10)
        assert info.value.code == status and "error" in json.loads(info.value.read())
    # bound to localhost, it answers only to localhost names (a rebound DNS name from a web page is refused)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(server + "/", headers={"Host": "evil.example"}), timeout=10)
    assert info.value.code == 400 and json.loads(info.value.read())["field"] == "Host"
    with urllib.request.urlopen(server + "/", timeout=10) as response:
        page = response.read().decode()
        assert response.headers["Content-Security-Policy"] == PAGE_POLICY
    assert "<script src" not in page and "http" not in page.split("<body>")[1]  # nothing loaded from elsewhere


class Blocking:
    """A stand-in run whose generation waits for `release`; the question "boom" makes it fail."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def windows(self, context: str, question: str) -> list[Window]:
        if question == "crash":
            raise ValueError("a tokenizer bug")
        return [Window(Question("ask", "", context, question, (), ()), 0, 0, 1)]

    def answer_windows(self, windows, decoding=None):
        self.started.set()
        self.release.wait(timeout=30)
        if any(w.question.question == "boom" for w in windows):
            raise RuntimeError("boom")
        return [ScoredAnswer(w.question.context[:1], None) for w in windows]


def test_full_queue_is_503_and_a_failed_batch_is_500():
    run = Blocking()
    app = create_app(run, run_name="stand-in", default_decoding="greedy", max_batch=1, queue_size=1, wait_s=0)
    with running(app) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url + "/v1/answer", {"context": "abc", "question": "q"})
        assert run.started.wait(timeout=20)  # the worker holds the first request
        second = pool.submit(post, url + "/v1/answer", {"context": "xyz", "question": "q"})
        deadline = time.monotonic() + 20
        while app.state.batcher.queue.qsize() < 1:  # the second waits in the queue
            assert time.monotonic() < deadline
            time.sleep(0.01)
        code, reply = post(url + "/v1/answer", {"context": "full", "question": "q"})
        assert code == 503 and "busy" in reply["error"]
        run.release.set()
        (code, reply), (code2, reply2) = first.result(timeout=30), second.result(timeout=30)
        assert (code, reply["answer"], code2, reply2["answer"]) == (200, "a", 200, "x")
        code, reply = post(url + "/v1/answer", {"context": "abc", "question": "boom"})
        assert code == 500 and "RuntimeError" in reply["error"]
        code, reply = post(url + "/v1/answer", {"context": "def", "question": "q"})
        assert code == 200 and reply["answer"] == "d"


def test_a_cancelled_or_crashing_request_fails_alone():
    run = Blocking()
    run.release.set()
    batcher = Batcher(run, wait_s=0)
    gone = batcher.submit(Pending("abc", "q", "greedy"))
    assert gone.cancel()  # its client left before the worker took it
    crash = batcher.submit(Pending("abc", "crash", "greedy"))
    batcher.start()
    try:
        with pytest.raises(RequestError) as info:
            crash.result(timeout=20)
        assert info.value.status == 500 and "ValueError: a tokenizer bug" in info.value.body["error"]
        assert batcher.submit(Pending("xyz", "q", "greedy")).result(timeout=20)["answer"] == "x"
    finally:
        batcher.stop()
    assert gone.cancelled()


def test_page_answers_in_chromium(server, chromium):
    context = dev_questions(1)[0].context
    question = dev_questions(1)[0].question
    _, expected = post(server + "/v1/answer", {"context": context, "question": question})
    page = chromium.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(server + "/")
        page.fill("#context", context)
        page.fill("#question", question)
        page.click("#ask")
        mark = page.wait_for_selector("#passage mark", timeout=30_000)
        assert mark.text_content() == expected["answer"] != ""
        assert page.text_content("#answer") == expected["answer"]
        assert page.text_content("#passage") == context  # the whole passage, the answer marked inside it
        assert page.text_content("#error") == ""
        assert all(u.startswith(server) for u in requests), requests  # nothing fetched from elsewhere
        page.fill("#question", " ")
        page.click("#ask")
        page.locator("#error", has_text="422: empty passage or question").wait_for(timeout=30_000)
        assert page.is_hidden("#result")
    finally:
        page.close()


def test_cli_serve_defaults_to_localhost_and_checks_the_run(tmp_path, capsys):
    args = build_parser().parse_args(["serve", "--run", "RUN"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert main(["serve", "--run", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--run", "RUN", "--port", "70000"])


class Standin:
    """A run that answers at once: the passage's first character (or `answer`, when set)."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer = answer

    def windows(self, context: str, question: str) -> list[Window]:
        return [Window(Question("ask", "", context, question, (), ()), 0, 0, 1)]

    def answer_windows(self, windows, decoding=None):
        return [ScoredAnswer(w.question.context[:1] if self.answer is None else self.answer, None) for w in windows]


def standin_app(host: str = "127.0.0.1", **kwargs):
    return create_app(Standin(), run_name="stand-in", default_decoding="greedy", host=host, wait_s=0, **kwargs)


@pytest.fixture(scope="module")
def standin_server():
    with running(standin_app()) as url:
        yield url


HOSTNAME = socket.gethostname()
HOST_CHECKS = [
    # (bound to, Host header, accepted): loopback binds answer to loopback names and addresses only
    *[(bind, good, True) for bind in ("127.0.0.1", "localhost") for good in ("localhost", "127.0.0.1:8000")],
    *[
        ("127.0.0.1", good, True)
        for good in ("LOCALHOST.:8000", "[::1]:8000", "127.0.0.2", "ip6-localhost", "a.localhost")
    ],
    *[
        (bind, bad, False)
        for bind in ("127.0.0.1", "127.0.0.2", "127.255.0.1", "::1", "0:0:0:0:0:0:0:1", "[::1]", "::ffff:127.0.0.1")
        + ("localhost", "localhost.", "LOCALHOST", "ip6-localhost", "ip6-loopback")
        for bad in ("evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io", "8.8.8.8")
    ],
    ("127.0.0.1", HOSTNAME, False),
    ("127.0.0.1", "", False),
    ("127.0.0.1", "[::1", False),
    ("127.0.0.1", "localhost:80:80", False),
    # a private, link-local or public address: that address (any spelling) and this machine's name
    *[(bind, bind, True) for bind in ("10.1.2.3", "172.16.0.9", "192.168.1.5", "169.254.7.7", "203.0.113.9")],
    *[(bind, f"[{bind}]:8000", True) for bind in ("fd00::5", "fe80::1", "2001:db8::1")],
    ("fe80::1", "[FE80:0:0::1]", True),
    ("192.168.1.5", "192.168.1.5:8000", True),
    ("192.168.1.5", HOSTNAME, True),
    *[
        (bind, bad, False)
        for bind in ("10.1.2.3", "172.16.0.9", "192.168.1.5", "169.254.7.7", "fd00::5", "fe80::1", "203.0.113.9")
        for bad in ("evil.example", "localhost", "127.0.0.1", "10.9.9.9")
    ],
    # a wildcard: loopback names and addresses, the address the request reached (here 10.0.0.1), the machine's name
    *[(bind, good, True) for bind in ("0.0.0.0", "::") for good in ("localhost", "127.0.0.1", "[::1]:8000")],
    *[(bind, good, True) for bind in ("0.0.0.0", "::") for good in ("10.0.0.1:8000", "[::ffff:10.0.0.1]", HOSTNAME)],
    *[(bind, bad, False) for bind in ("0.0.0.0", "::", "[::]") for bad in ("evil.example", "10.0.0.2", "[fd00::9]")],
]


@pytest.mark.parametrize("bind, host_header, accepted", HOST_CHECKS)
def test_every_bind_answers_only_to_its_own_host_names(bind, host_header, accepted):
    from starlette.testclient import TestClient

    with TestClient(standin_app(bind), base_url="http://10.0.0.1:8000") as client:
        for method, path in (("GET", "/"), ("GET", "/v1/health"), ("POST", "/v1/answer"), ("GET", "/nowhere")):
            reply = client.request(
                method, path, json={"context": "abc", "question": "q"}, headers={"Host": host_header}
            )
            if accepted:
                assert reply.status_code != 400, (method, path, reply.text)
            else:
                assert reply.status_code == 400, (method, path, reply.text)
                body = reply.json()
                assert set(body) == {"error", "field", "fix"} and body["field"] == "Host", body
                assert "--allow-host" in body["fix"]


def test_allow_host_opts_in_a_name_and_star_any():
    from starlette.testclient import TestClient

    for allowed, host_header, status in (
        (["Proxy.Example."], "proxy.example:443", 200),
        (["proxy.example"], "other.example", 400),
        (["*"], "anything.example", 200),
    ):
        with TestClient(standin_app("127.0.0.1", allow_hosts=allowed)) as client:
            assert client.get("/v1/health", headers={"Host": host_header}).status_code == status, allowed
    with pytest.raises(InputError):
        standin_app("127.0.0.1", allow_hosts=["bad host/x"])


@pytest.mark.parametrize("bind", ["::1", "0.0.0.0"])
def test_host_check_over_real_http(bind):
    with running(standin_app(bind), bind) as url:
        port = url.rsplit(":", 1)[1]
        for host_header, status in ((f"localhost:{port}", 200), (url.split("//")[1], 200), ("evil.example", 400)):
            request = urllib.request.Request(url + "/v1/health", headers={"Host": host_header})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    code = response.status
            except urllib.error.HTTPError as err:
                code, reply = err.code, json.loads(err.read())
                assert reply["field"] == "Host"
            assert code == status, host_header
        with socket.create_connection((url.split("//")[1].rsplit(":", 1)[0].strip("[]"), int(port))) as conn:
            conn.sendall(b"GET /v1/health HTTP/1.0\r\n\r\n")  # no Host at all
            reply = b"".join(iter(lambda: conn.recv(65536), b""))
        assert reply.startswith(b"HTTP/1.1 400") and json.loads(reply.split(b"\r\n\r\n", 1)[1])["field"] == "Host"


ODD = [
    # (body, content type): each echoes a value that cannot be encoded as it is, or is huge
    (b'{"context": "a", "question": "q", "\\ud800": 1}', "application/json"),
    (b'{"context": "a", "question": "q", "\\udfff\\ud800x": 1}', "application/json"),
    (b'{"context": "a", "question": "q", "' + b"k" * 100_000 + b'": 1}', "application/json"),
    (b'{"context": "a", "question": "q", "decoding": "\\ud800"}', "application/json"),
    (b'{"context": "a", "question": "q", "decoding": "' + b"d" * 100_000 + b'"}', "application/json"),
    (
        b'{"context": "a", "question": "q", "' + b"k" * 50_000 + b'": 1, "' + b"k" * 50_000 + b'": 2}',
        "application/json",
    ),
    (b'{"context": "a", "question": "q", "\\ud800": 1, "\\ud800": 2}', "application/json"),
    (b'{"context": "a", "question": "q"}', "text/\xe9\x85" + "x" * 5000),
]


def test_an_error_echoing_an_odd_value_is_still_a_json_error(standin_server):
    for body, content_type in ODD:
        code, reply = post(standin_server + "/v1/answer", body, content_type)
        assert code in (400, 415, 422), (body[:60], reply)
        assert set(reply) == {"error", "field", "fix"} and reply["error"], (body[:60], reply)
        assert all(len(v) < 1000 for v in reply.values() if v), (body[:60], reply)  # cut, saying how long
        if len(body) > 50_000 or len(content_type) > 100:
            assert " characters" in reply["error"], reply
    assert post(standin_server + "/v1/answer", {"context": "abc", "question": "q"})[0] == 200
    for path in ("/%ff%fe", "/%ed%a0%80", "/v1/answer/%00%e3%81%82", "/%c0%af?%ed%a0%80"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(standin_server + path, timeout=10)
        assert info.value.code == 404 and set(json.loads(info.value.read())) == {"error", "field", "fix"}


def test_a_reply_that_cannot_be_encoded_is_a_json_500():
    with running(create_app(Standin("\ud800"), run_name="x", default_decoding="greedy", wait_s=0)) as url:
        code, reply = post(url + "/v1/answer", {"context": "abc", "question": "q"})
        assert code == 500 and set(reply) == {"error", "field", "fix"}, reply
        assert post(url + "/v1/health", {}, headers={})[0] == 405  # and it goes on


def test_the_body_limit_is_the_documented_character_limits_however_escaped(standin_server):
    assert MAX_BODY_BYTES >= 12 * (MAX_ASK_CONTEXT_CHARS + MAX_ASK_QUESTION_CHARS)
    widest = {"context": "\U0001f600" * MAX_ASK_CONTEXT_CHARS, "question": "\U0001f600" * MAX_ASK_QUESTION_CHARS}
    body = json.dumps({**widest, "decoding": "greedy"}, indent=8).encode()  # each a 12-byte \\ud83d\\ude00
    assert len(body) > 6 * (MAX_ASK_CONTEXT_CHARS + MAX_ASK_QUESTION_CHARS) + 4096
    code, reply = post(standin_server + "/v1/answer", body)
    assert code == 200 and reply["answer"] == "\U0001f600", reply
    for name, limit in (("context", MAX_ASK_CONTEXT_CHARS), ("question", MAX_ASK_QUESTION_CHARS)):
        over = json.dumps({**widest, name: "\U0001f600" * (limit + 1)}).encode()
        code, reply = post(standin_server + "/v1/answer", over)
        assert code == 413 and reply["field"] == name and f"{limit + 1} characters" in reply["error"], reply


def test_the_docs_state_the_limits_in_code():
    from pathlib import Path

    from jsquad_lora.tuned import serving as serve

    docs = (Path(__file__).parents[1] / "docs" / "using-a-run.md").read_text(encoding="utf-8")
    section = docs.split("## serve:")[1].split("\n## ")[0]
    for stated in (
        f"over {serve.MAX_BODY_BYTES:,} bytes",
        f"{serve.MAX_BYTES_PER_CHAR} bytes for each of the",
        f"{MAX_ASK_CONTEXT_CHARS + MAX_ASK_QUESTION_CHARS:,} characters",
        f"plus {serve.BODY_SLACK_BYTES:,}",
        f"passage over {MAX_ASK_CONTEXT_CHARS:,} or the question over {MAX_ASK_QUESTION_CHARS:,}",
        f"cut to {serve.ECHO_CHARS} characters",
        "--allow-host",
    ):
        assert stated in section.replace("\n  ", " ").replace("\n", " "), stated
