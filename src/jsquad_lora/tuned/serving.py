"""What `serve`'s two APIs (its own /v1/answer and /v1/question, and OpenAI's in openai_api.py) share: the
batching worker, the request checks and the error replies. `serve.py` assembles the app; access.py holds the
Host and API-key checks in front of it.

HTTP is FastAPI on uvicorn. Written here by hand, as neither offers it:
- the batching: requests wait in a bounded queue and one worker thread answers what has gathered with
  one `generate_answers` call per decoding mode, so concurrent requests share a batch and each answer
  equals the one its request gets alone (the guarantee of `generate_answers`); the questions a task=question
  run writes (/v1/question) likewise, in one greedy generation. A full queue is a 503.
  The model is used by the worker thread only.
- the errors: every refusal is `{"error", "field", "fix"}` JSON, on every route but OpenAI's (those answer in
  OpenAI's shape, openai_api.error_response), and rendering one never fails: what it echoes of the request
  is escaped and cut (`echo`), and a reply that still cannot be encoded is sent escaped to ASCII. None stops
  the server.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from jsquad_lora.encoding.windows import Window
from jsquad_lora.errors import InputError, cut
from jsquad_lora.generate.decoding import DECODING_MODES, ScoredAnswer
from jsquad_lora.tuned.ask import MAX_ASK_CONTEXT_CHARS, MAX_ASK_QUESTION_CHARS, check_question_text

log = logging.getLogger(__name__)
#: the most bytes JSON spends on one character: one outside the BMP as a surrogate-pair escape, "\\ud83d\\ude00"
MAX_BYTES_PER_CHAR = 12
#: room for the rest of a body: its keys, "decoding" and whitespace between them, escaped however a client likes
BODY_SLACK_BYTES = 65_536
#: a request body larger than this is refused unread (413); one whose texts are within the character limits fits,
#: however they are escaped
MAX_BODY_BYTES = MAX_BYTES_PER_CHAR * (MAX_ASK_CONTEXT_CHARS + MAX_ASK_QUESTION_CHARS) + BODY_SLACK_BYTES
LIMITS = {"context": MAX_ASK_CONTEXT_CHARS, "question": MAX_ASK_QUESTION_CHARS}  # in characters (code points)
LENGTH_FIX = f"the passage may have {MAX_ASK_CONTEXT_CHARS} characters, the question {MAX_ASK_QUESTION_CHARS}"
FIELDS = ("context", "question", "decoding")
SHAPE = 'send a JSON object: {"context": "...", "question": "...", "decoding": "extractive"} (decoding optional)'
#: /v1/question (a task=question run): the passage and the answer to write a question for
QUESTION_LIMITS = {"context": MAX_ASK_CONTEXT_CHARS, "answer": MAX_ASK_QUESTION_CHARS}
QUESTION_LENGTH_FIX = f"the passage may have {MAX_ASK_CONTEXT_CHARS} characters, the answer {MAX_ASK_QUESTION_CHARS}"
QUESTION_FIELDS = ("context", "answer")
QUESTION_SHAPE = 'send a JSON object: {"context": "...", "answer": "..."} (the answer to write a question for)'
SURROGATE_FIX = "a \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one (together one character)"
#: an echoed request value is cut to this many characters; any other string in an error reply to MAX_ERROR_CHARS
ECHO_CHARS = 80
MAX_ERROR_CHARS = 500
#: the page loads nothing from anywhere: its script and style are inline, it talks to this server only
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Answerer(Protocol):
    """What the server needs of a run (loaded.LoadedRun; tests pass stand-ins). The OpenAI routes also use
    chat_prompt, complete and usage, /v1/question (a task=question run) question_prompt and write_questions;
    every method is called by the worker thread only."""

    def windows(self, context: str, question: str) -> list[Window]: ...
    def answer_windows(self, windows: list[Window], decoding: str | None = None) -> list[ScoredAnswer]: ...
    def window_prompt(self, window: Window) -> str: ...
    def chat_prompt(self, messages: list[dict[str, str]]) -> str: ...
    def complete(self, prompt: str, max_new_tokens: int | None, stop: Sequence[str]) -> tuple[str, str]: ...
    def usage(self, prompt: str, completion: str) -> dict[str, int]: ...
    def question_prompt(self, context: str, answer: str) -> str: ...
    def write_questions(self, prompts: list[str], passages: list[str]) -> list[str]: ...


@dataclass
class Pending:
    """A question waiting for its answer: `future` gets the API's answer object or a RequestError.
    `usage`: the answer object also holds OpenAI's token counts of its prompt and answer."""

    context: str
    question: str
    decoding: str
    usage: bool = False
    received: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


@dataclass
class Wanted:
    """A question to write (a task=question run): `future` gets {"question", "batch", "seconds"} or a RequestError."""

    context: str
    answer: str
    received: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


@dataclass
class Job:
    """Work the worker thread does alone with the run (a free generation): `future` gets `work(run)`, or the
    RequestError it raises (an InputError is a 400 naming what was wrong)."""

    work: Callable[[Answerer], Any]
    received: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


class RequestError(Exception):
    """A request refused: HTTP status and the JSON body that says why; `code` is OpenAI's error code."""

    def __init__(
        self,
        status: int,
        problem: str,
        field_name: str | None = None,
        fix: str | None = None,
        code: str | None = None,
    ):
        super().__init__(problem)
        self.status, self.code = status, code
        self.body = {"error": problem, "field": field_name, "fix": fix}


def echo(value: str) -> str:
    """A value from the request, quoted for an error message: repr escapes control characters and lone
    surrogates (which no encoder takes); cut to ECHO_CHARS characters, saying how long it was."""
    return repr(value) if len(value) <= ECHO_CHARS else f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"


def error_response(err: RequestError, headers: dict | None = None) -> Response:
    """The JSON reply of a refusal. It never raises: each string is made encodable and bounded, and should
    encoding still fail the reply is escaped to ASCII."""
    headers = {**(headers or {}), **({"Retry-After": "1"} if err.status == 503 else {})}
    body = {
        k: None if v is None else cut(str(v), ECHO_CHARS if k == "field" else MAX_ERROR_CHARS)
        for k, v in err.body.items()
    }
    try:
        return JSONResponse(body, status_code=err.status, headers=headers)
    except Exception:  # noqa: BLE001 (the last resort: an error reply must not become a plain 500)
        return Response(json.dumps(err.body, default=repr), err.status, headers, "application/json")


class Batcher:
    """A bounded queue of questions (questions to write, `Wanted`, and free generations, `Job`s) and the one thread
    that answers them: the questions in batches, the questions to write in one batch, each job alone."""

    def __init__(self, run: Answerer, *, max_batch: int = 32, queue_size: int = 64, wait_s: float = 0.01):
        self.run, self.max_batch, self.wait_s = run, max_batch, wait_s
        self.queue: queue.Queue[Pending | Wanted | Job] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="jsquad-lora-answers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        while not self.queue.empty():
            future = self.queue.get_nowait().future
            if future.set_running_or_notify_cancel():
                future.set_exception(RequestError(503, "the server is shutting down"))

    def submit(self, request: Pending | Wanted | Job) -> Future:
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            raise RequestError(
                503,
                f"the server is busy: {self.queue.maxsize} questions are already waiting",
                fix="try again in a moment (or start the server with a larger --queue-size)",
            ) from None
        return request.future

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self.queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            deadline = time.monotonic() + self.wait_s  # let requests sent together arrive and share the batch
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            # a request cancelled while it waited (its client is gone) is dropped; the others can no longer be
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            questions = [r for r in batch if isinstance(r, Pending)]
            for mode in dict.fromkeys(r.decoding for r in questions):
                self._answer([r for r in questions if r.decoding == mode], mode)
            if wanted := [r for r in batch if isinstance(r, Wanted)]:
                self._write(wanted)
            for job in (r for r in batch if isinstance(r, Job)):
                self._run(job)

    def _answer(self, requests: list[Pending], mode: str) -> None:
        """One generation for the requests of one decoding mode (every window of every request); a request
        whose windows cannot be built fails alone, an error in generation fails the batch (and is logged),
        the thread goes on."""
        from jsquad_lora.tuned.loaded import answer_object

        ready, windows = [], []
        for r, found in self._built(requests, lambda r: self.run.windows(r.context, r.question)):
            ready.append((r, len(windows), len(windows) + len(found)))
            windows += found
        if not ready:
            return
        try:
            answers = self.run.answer_windows(windows, mode)
            replies = [answer_object(r.context, windows[a:b], answers[a:b]) for r, a, b in ready]
            usages = [
                _usage(self.run, windows[a:b], f["answer"]) if r.usage else None for (r, a, b), f in zip(ready, replies)
            ]
        except Exception as err:  # noqa: BLE001 (the server answers 500 and keeps serving)
            self._fail([r for r, _, _ in ready], err)
            return
        done = time.perf_counter()
        for (r, _, _), reply, usage in zip(ready, replies, usages):
            r.future.set_result(
                {
                    **reply,
                    "decoding": mode,
                    "passage_truncated": False,  # a passage too long for one prompt is read in windows, all of it
                    "batch": len(ready),  # questions answered by the same generation call
                    "seconds": round(done - r.received, 4),
                    **({"usage": usage} if r.usage else {}),
                }
            )

    def _write(self, requests: list[Wanted]) -> None:
        """One greedy generation for the questions wanted; a request whose prompt cannot be built (a passage
        too long for one prompt) fails alone, an error in generation fails the batch (and is logged)."""
        built = self._built(requests, lambda r: self.run.question_prompt(r.context, r.answer))
        ready, prompts = [r for r, _ in built], [prompt for _, prompt in built]
        if not ready:
            return
        try:
            questions = self.run.write_questions(prompts, [r.context for r in ready])
        except Exception as err:  # noqa: BLE001 (the server answers 500 and keeps serving)
            self._fail(ready, err)
            return
        done = time.perf_counter()
        for r, question in zip(ready, questions):
            r.future.set_result({"question": question, "batch": len(ready), "seconds": round(done - r.received, 4)})

    def _run(self, job: Job) -> None:
        try:
            job.future.set_result(job.work(self.run))
        except RequestError as err:
            job.future.set_exception(err)
        except InputError as err:
            job.future.set_exception(RequestError(400, err.problem, err.source, err.fix))
        except Exception as err:  # noqa: BLE001 (the server answers 500 and keeps serving)
            self._fail([job], err)

    def _built(self, requests: list, build) -> list[tuple]:
        """(request, build(request)) for each request whose input builds; one that cannot fails alone (422 for
        bad input, 500 logged for anything else) and the thread goes on."""
        built = []
        for r in requests:
            try:
                built.append((r, build(r)))
            except InputError as err:
                r.future.set_exception(RequestError(422, err.problem, err.source, err.fix))
            except Exception as err:  # noqa: BLE001 (the thread must outlive any one request)
                self._fail([r], err)
        return built

    @staticmethod
    def _fail(requests: list[Pending | Wanted | Job], err: Exception) -> None:
        log.error("answering %d question(s) failed", len(requests), exc_info=err)
        for r in requests:
            r.future.set_exception(RequestError(500, f"answering failed ({type(err).__name__}: {err})"[:500]))


def _usage(run: Answerer, windows: list[Window], answer: str | None) -> dict[str, int]:
    """OpenAI's token counts of one question: every window's prompt (each was read), and the answer."""
    counts = [run.usage(run.window_prompt(w), "") for w in windows]
    prompt_tokens = sum(c["prompt_tokens"] for c in counts)
    completion = run.usage("", answer or "")["completion_tokens"]
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def parse_request(body: bytes, default_decoding: str) -> Pending:
    """The question of a request body, or a RequestError saying what is wrong with it."""
    return question_of(json_object(body, SHAPE), default_decoding)


def json_object(body: bytes, shape: str) -> dict:
    """A request body's JSON object, or a RequestError (`shape`: the fix, what the body should look like)."""
    from jsquad_lora.util.jsonio import parse_json_text

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the body is not UTF-8 (byte {err.start})", fix="send UTF-8 JSON") from None
    try:
        data = parse_json_text(text, "request body", "request")
    except InputError as err:
        problem = f"{err.problem} ({err.where})" if err.where else err.problem
        raise RequestError(400, problem, fix=shape) from None
    if not isinstance(data, dict):
        raise RequestError(422, f"the body must be a JSON object, not {_json_type(data)}", fix=shape)
    return data


def _check_fields(data: dict, fields: tuple[str, ...], limits: dict[str, int], length_fix: str) -> None:
    """A request's fields: none unknown, each of `limits` present, a string and within its limit (characters)."""
    if unknown := [k for k in data if k not in fields]:
        raise RequestError(422, f"unknown field {echo(unknown[0])}", unknown[0], fix=f"fields: {', '.join(fields)}")
    for name, limit in limits.items():
        if name not in data:
            raise RequestError(422, f"missing field {name!r}", name, fix=f"fields: {', '.join(fields)}")
        if not isinstance(data[name], str):
            raise RequestError(422, f"{name} must be a string, not {_json_type(data[name])}", name)
        if len(data[name]) > limit:
            raise RequestError(
                413, f"{name} too long: {len(data[name])} characters (the limit is {limit})", name, fix=length_fix
            )


def _check_texts(context: str, text: str, names: tuple[str, str]) -> None:
    """`check_question_text` as a RequestError: 413 too long, 422 empty or not valid text."""
    try:
        check_question_text(context, text, names)
    except InputError as err:
        status = 413 if err.problem.startswith("input too long") else 422
        fix = SURROGATE_FIX if "surrogate" in err.problem else err.fix  # the CLI's fix is about command lines
        raise RequestError(status, err.problem, err.source, fix) from None


def question_of(data: dict, default_decoding: str, usage: bool = False) -> Pending:
    """The question of a request's fields (`FIELDS`), checked as `ask` checks its text, or a RequestError."""
    _check_fields(data, FIELDS, LIMITS, LENGTH_FIX)
    decoding = data.get("decoding", None)
    if decoding is None:
        decoding = default_decoding
    elif not isinstance(decoding, str) or decoding not in DECODING_MODES:
        said = echo(decoding) if isinstance(decoding, str) else _json_type(decoding)
        raise RequestError(422, f"unknown decoding mode {said}", "decoding", fix=f"one of: {', '.join(DECODING_MODES)}")
    _check_texts(data["context"], data["question"], ("context", "question"))
    return Pending(data["context"], data["question"], decoding, usage)


def parse_question_request(body: bytes) -> Wanted:
    """The question wanted by a /v1/question body (`QUESTION_FIELDS`), checked as `ask --answer` checks its
    text, or a RequestError."""
    data = json_object(body, QUESTION_SHAPE)
    _check_fields(data, QUESTION_FIELDS, QUESTION_LIMITS, QUESTION_LENGTH_FIX)
    _check_texts(data["context"], data["answer"], ("context", "answer"))
    return Wanted(data["context"], data["answer"])


def wrong_task(task: str) -> RequestError:
    """The 400 of a route the run's task does not take: /v1/answer on a task=question run, /v1/question on a
    task=answer run."""
    if task == "question":
        return RequestError(
            400,
            "this run writes questions (task=question): it does not answer them",
            fix='POST /v1/question {"context": "...", "answer": "..."}: the question whose answer that is',
        )
    return RequestError(
        400,
        f"this run answers questions (task={task}): it does not write them",
        fix='POST /v1/answer {"context": "...", "question": "..."} (a task=question run writes questions)',
    )


def _json_type(value: Any) -> str:
    from jsquad_lora.util.jsonio import json_type_name

    return json_type_name(type(value))


#: the page's words per task: its second box and button, the result's name, and whether the decoding choice shows
PAGE_WORDS = {
    "answer": {
        "INTRO": "The answer is a span of the passage (extractive decoding) or free text (greedy); a span is "
        "highlighted where it occurs in the passage.",
        "SECOND": "Question",
        "EXAMPLE": "梅雨がみられないのは日本のどこか。",
        "BUTTON": "Answer",
        "RESULT": "Answer",
    },
    "question": {
        "INTRO": "A question-generation run (task=question): give a passage and an answer in it, and it writes a "
        "question whose answer that is (greedy decoding). The answer is highlighted where it occurs in the passage.",
        "SECOND": "Answer",
        "EXAMPLE": "北海道と小笠原諸島",
        "BUTTON": "Write a question",
        "RESULT": "Question",
    },
}


def page_html(run_name: str, default_decoding: str, task: str = "answer") -> str:
    """The page for a run of `task`, with the run's name, decoding modes and words filled in (HTML-escaped)."""
    import html

    options = "".join(
        f'<option value="{html.escape(m)}"{" selected" if m == default_decoding else ""}>{html.escape(m)}</option>'
        for m in DECODING_MODES
    )
    page = resources.files(__package__).joinpath("serve_page.html").read_text(encoding="utf-8")
    for key, value in {"TASK": task, **PAGE_WORDS[task]}.items():
        page = page.replace("{{" + key + "}}", html.escape(value))
    page = page.replace("{{HIDDEN}}", " hidden" if task == "question" else "")  # a question is written greedily
    return page.replace("{{RUN}}", html.escape(run_name)).replace("{{OPTIONS}}", options)


async def read_body(request: Request) -> bytes:
    """The body of a JSON request: refused (415) unless it says it is JSON, and (413) once it passes
    MAX_BODY_BYTES, before it is all read."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        # a page on another site can send a plain form or text/plain POST to localhost without asking;
        # JSON needs its permission (CORS), which this server never gives
        raise RequestError(415, f"Content-Type must be application/json, not {echo(kind) if kind else 'none'}")
    too_long = RequestError(413, f"the request body is over {MAX_BODY_BYTES} bytes", fix=LENGTH_FIX)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_long
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_long
        chunks.append(chunk)
    return b"".join(chunks)
