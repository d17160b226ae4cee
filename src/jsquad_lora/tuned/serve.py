"""`jsquad-lora serve`: a finished run behind a small HTTP API and a page to try it in a browser.

    POST /v1/answer  {"context": str, "question": str, "decoding"?: mode}  →  {"answer", "start", "end", ...}
    GET  /           the page (passage and question boxes, the answer highlighted in the passage)
    GET  /v1/health  {"status": "ok", "run": ..., "decoding": the run's mode, "modes": [...]}

HTTP is FastAPI on uvicorn; what is written here is the batching: requests wait in a bounded queue
and one worker thread answers what has gathered with one `generate_answers` call per decoding mode,
so concurrent requests share a batch and each answer equals the one its request gets alone (the
guarantee of `generate_answers`). A full queue is a 503; a bad request a 4xx with a JSON error
naming the field; neither stops the server. The model is used by the worker thread only.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from jsquad_lora.errors import InputError
from jsquad_lora.generate.decoding import DECODING_MODES
from jsquad_lora.tuned.ask import MAX_ASK_CONTEXT_CHARS, MAX_ASK_QUESTION_CHARS, check_question_text

log = logging.getLogger(__name__)
#: a request body larger than this is refused unread (413): the text limits, JSON-escaped (\uXXXX), fit in it
MAX_BODY_BYTES = 6 * (MAX_ASK_CONTEXT_CHARS + MAX_ASK_QUESTION_CHARS) + 4096
FIELDS = ("context", "question", "decoding")
SHAPE = 'send a JSON object: {"context": "...", "question": "...", "decoding": "extractive"} (decoding optional)'
SURROGATE_FIX = "a \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one (together one character)"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: the page loads nothing from anywhere: its script and style are inline, it talks to this server only
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Answerer(Protocol):
    """What the server needs of a run (ask.LoadedRun; tests pass stand-ins)."""

    def prompt(self, context: str, question: str) -> tuple[str, str]: ...
    def generate(self, prompts: list[str], passages: list[str], decoding: str | None = None) -> list[str]: ...


@dataclass
class Pending:
    """A question waiting for its answer: `future` gets the API's answer object or a RequestError."""

    context: str
    question: str
    decoding: str
    received: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


class RequestError(Exception):
    """A request refused: HTTP status and the JSON body that says why."""

    def __init__(self, status: int, problem: str, field_name: str | None = None, fix: str | None = None):
        super().__init__(problem)
        self.status = status
        self.body = {"error": problem, "field": field_name, "fix": fix}


class Batcher:
    """A bounded queue of questions and the one thread that answers them in batches."""

    def __init__(self, run: Answerer, *, max_batch: int = 32, queue_size: int = 64, wait_s: float = 0.01):
        self.run, self.max_batch, self.wait_s = run, max_batch, wait_s
        self.queue: queue.Queue[Pending] = queue.Queue(maxsize=queue_size)
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

    def submit(self, request: Pending) -> Future:
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
            for mode in dict.fromkeys(r.decoding for r in batch):
                self._answer([r for r in batch if r.decoding == mode], mode)

    def _answer(self, requests: list[Pending], mode: str) -> None:
        """One generation for the requests of one decoding mode; a request whose prompt cannot be
        built fails alone, an error in generation fails the batch (and is logged), the thread goes on."""
        ready, prompts, passages = [], [], []
        for r in requests:
            try:
                prompt, passage = self.run.prompt(r.context, r.question)
            except InputError as err:
                r.future.set_exception(RequestError(422, err.problem, err.source, err.fix))
                continue
            except Exception as err:  # noqa: BLE001 (the thread must outlive any one request)
                self._fail([r], err)
                continue
            ready.append(r)
            prompts.append(prompt)
            passages.append(passage)
        if not ready:
            return
        try:
            answers = self.run.generate(prompts, passages, mode)
        except Exception as err:  # noqa: BLE001 (the server answers 500 and keeps serving)
            self._fail(ready, err)
            return
        done = time.perf_counter()
        for r, answer, passage in zip(ready, answers, passages):
            start = r.context.find(answer) if answer else -1
            r.future.set_result(
                {
                    "answer": answer,
                    # code-point offsets of the answer's first occurrence in `context`, null if it is not in it
                    "start": start if start >= 0 else None,
                    "end": start + len(answer) if start >= 0 else None,
                    "decoding": mode,
                    "passage_truncated": passage != r.context,  # the prompt held only part of the passage
                    "batch": len(ready),  # questions answered by the same generation call
                    "seconds": round(done - r.received, 4),
                }
            )

    @staticmethod
    def _fail(requests: list[Pending], err: Exception) -> None:
        log.error("answering %d question(s) failed", len(requests), exc_info=err)
        for r in requests:
            r.future.set_exception(RequestError(500, f"answering failed ({type(err).__name__}: {err})"[:500]))


def parse_request(body: bytes, default_decoding: str) -> Pending:
    """The question of a request body, or a RequestError saying what is wrong with it."""
    from jsquad_lora.util.jsonio import parse_json_text

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the body is not UTF-8 (byte {err.start})", fix="send UTF-8 JSON") from None
    try:
        data = parse_json_text(text, "request body", "request")
    except InputError as err:
        problem = f"{err.problem} ({err.where})" if err.where else err.problem
        raise RequestError(400, problem, fix=SHAPE) from None
    if not isinstance(data, dict):
        raise RequestError(422, f"the body must be a JSON object, not {_json_type(data)}", fix=SHAPE)
    if unknown := [k for k in data if k not in FIELDS]:
        raise RequestError(422, f"unknown field {unknown[0]!r}", unknown[0], fix=f"fields: {', '.join(FIELDS)}")
    for name in ("context", "question"):
        if name not in data:
            raise RequestError(422, f"missing field {name!r}", name, fix=f"fields: {', '.join(FIELDS)}")
        if not isinstance(data[name], str):
            raise RequestError(422, f"{name} must be a string, not {_json_type(data[name])}", name)
    decoding = data.get("decoding", None)
    if decoding is None:
        decoding = default_decoding
    elif not isinstance(decoding, str) or decoding not in DECODING_MODES:
        shown = repr(decoding) if isinstance(decoding, str) else _json_type(decoding)
        raise RequestError(
            422, f"unknown decoding mode {shown[:60]}", "decoding", fix=f"one of: {', '.join(DECODING_MODES)}"
        )
    try:
        check_question_text(data["context"], data["question"], ("context", "question"))
    except InputError as err:
        status = 413 if err.problem.startswith("input too long") else 422
        fix = SURROGATE_FIX if "surrogate" in err.problem else err.fix  # the CLI's fix is about command lines
        raise RequestError(status, err.problem, err.source, fix) from None
    return Pending(data["context"], data["question"], decoding)


def _json_type(value: Any) -> str:
    from jsquad_lora.util.jsonio import json_type_name

    return json_type_name(type(value))


def page_html(run_name: str, default_decoding: str) -> str:
    """The page, with the run's name and decoding modes filled in (both HTML-escaped)."""
    import html

    options = "".join(
        f'<option value="{html.escape(m)}"{" selected" if m == default_decoding else ""}>{html.escape(m)}</option>'
        for m in DECODING_MODES
    )
    template = resources.files(__package__).joinpath("serve_page.html").read_text(encoding="utf-8")
    return template.replace("{{RUN}}", html.escape(run_name)).replace("{{OPTIONS}}", options)


def create_app(
    run: Answerer,
    *,
    run_name: str,
    default_decoding: str,
    host: str = "127.0.0.1",
    max_batch: int = 32,
    queue_size: int = 64,
    wait_s: float = 0.01,
):
    """The ASGI app: the answer API, the page and a health check; its batcher runs while the app does."""
    batcher = Batcher(run, max_batch=max_batch, queue_size=queue_size, wait_s=wait_s)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN; the API is in the README
    app = FastAPI(title="jsquad-lora", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    if host in LOOPBACK:  # a web page elsewhere cannot reach a localhost server through a rebound DNS name
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]"])
    page = page_html(run_name, default_decoding)

    def error(err: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(err.body, status_code=err.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "field": None, "fix": None}, status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok", "run": run_name, "decoding": default_decoding, "modes": list(DECODING_MODES)}

    @app.post("/v1/answer")
    async def answer(request: Request) -> JSONResponse:
        try:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                # a page on another site can send a plain form or text/plain POST to localhost without asking;
                # JSON needs its permission (CORS), which this server never gives
                raise RequestError(415, f"Content-Type must be application/json, not {kind or 'none'!r}")
            body = await _read_body(request)
            future = batcher.submit(parse_request(body, default_decoding))
            return JSONResponse(await asyncio.wrap_future(future))
        except RequestError as err:
            return error(err)

    return app


async def _read_body(request: Request) -> bytes:
    """The body, refused (413) once it passes MAX_BODY_BYTES, before it is all read."""
    too_long = RequestError(
        413,
        f"the request body is over {MAX_BODY_BYTES} bytes",
        fix=f"the passage may have {MAX_ASK_CONTEXT_CHARS} characters, the question {MAX_ASK_QUESTION_CHARS}",
    )
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


def serve(
    run_dir: Path, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 32, queue_size: int = 64
) -> None:
    """Load the run once, then answer over HTTP until interrupted."""
    import uvicorn

    from jsquad_lora.tuned.loaded import load_run_model

    run = load_run_model(Path(run_dir))
    run.answer("梅雨は東アジアの気象現象である。", "梅雨はどこの現象か。")  # the first generation is slow: not a user's
    if host not in LOOPBACK:
        log.warning("serving on %s: anyone who can reach this machine can use the model (no authentication)", host)
    app = create_app(
        run,
        run_name=run.run_dir.resolve().name,
        default_decoding=run.cfg.eval.decoding,
        host=host,
        max_batch=max_batch,
        queue_size=queue_size,
    )
    shown = f"[{host}]" if ":" in host else host
    log.info("the page: http://%s:%d/  the API: POST http://%s:%d/v1/answer", shown, port, shown, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
