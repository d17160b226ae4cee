"""`jsquad-lora serve`: a finished run behind a small HTTP API and a page to try it in a browser.

    POST /v1/answer    {"context": str, "question": str, "decoding"?: mode}  →  {"answer", "start", "end", ...}
    POST /v1/question  {"context": str, "answer": str}  →  {"question", "batch", "seconds"}   (a task=question run)
    GET  /             the page (passage and question boxes, the answer highlighted in the passage; for a
                       task=question run passage and answer boxes, the question written)
    GET  /v1/health    {"status": "ok", "run": ..., "task": answer|question, "decoding": the run's mode, "modes": [...]}
    GET  /v1/models, POST /v1/chat/completions, POST /v1/completions   OpenAI's API (openai_api.py)

With an API key (`--api-key`, $JSQUAD_LORA_API_KEY) every /v1/ route wants `Authorization: Bearer KEY`.
A route the run's task does not take (/v1/answer on a task=question run, /v1/question on a task=answer run) is
a 400 naming the one to use. The batching, the request checks and the error replies both APIs share are in
serving.py, the Host and API-key checks in access.py; this module is the app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from jsquad_lora.generate.decoding import DECODING_MODES
from jsquad_lora.tuned import openai_api
from jsquad_lora.tuned.access import API_KEY_ENV, HostCheck, HostRule, KeyCheck
from jsquad_lora.tuned.serving import (
    PAGE_POLICY,
    Answerer,
    Batcher,
    RequestError,
    error_response,
    page_html,
    parse_question_request,
    parse_request,
    read_body,
    wrong_task,
)

log = logging.getLogger(__name__)


def create_app(
    run: Answerer,
    *,
    run_name: str,
    default_decoding: str,
    host: str = "127.0.0.1",
    allow_hosts: Sequence[str] = (),
    max_batch: int = 32,
    queue_size: int = 64,
    wait_s: float = 0.01,
    api_key: str | None = None,
    created: int | None = None,
    task: str = "answer",
):
    """The ASGI app: the answer API (the question API for a `task`=question run), OpenAI's API, the page and a
    health check; its batcher runs while the app does. `host` is the address it is bound to, which decides the
    Host names it answers (HostRule); `api_key`: the bearer token every /v1/ route wants (none: open); `created`:
    the model's Unix time in /v1/models."""
    hosts = HostRule(host, allow_hosts)
    batcher = Batcher(run, max_batch=max_batch, queue_size=queue_size, wait_s=wait_s)

    def reply(err: RequestError, path: str, headers: dict | None = None) -> Response:
        """A refusal in the shape of the route asked: OpenAI's on its routes, {"error", "field", "fix"} elsewhere."""
        return (openai_api.error_response if openai_api.is_openai_path(path) else error_response)(err, headers)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN; the API is in the README
    app = FastAPI(title="jsquad-lora", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.hosts = batcher, hosts
    if api_key:
        app.add_middleware(KeyCheck, key=api_key, reply=reply)
    app.add_middleware(HostCheck, rule=hosts, reply=reply)  # every route, the 404s too; before the key
    page = page_html(run_name, default_decoding, task)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return reply(RequestError(exc.status_code, str(exc.detail)), request.url.path, exc.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:  # logged by uvicorn, which re-raises it
        return reply(RequestError(500, f"internal error ({type(exc).__name__}: {exc})"), request.url.path)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/v1/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "run": run_name,
            "task": task,
            "decoding": default_decoding,
            "modes": list(DECODING_MODES),
        }

    @app.post("/v1/answer")
    async def answer(request: Request) -> JSONResponse:
        try:
            if task != "answer":
                raise wrong_task(task)
            future = batcher.submit(parse_request(await read_body(request), default_decoding))
            return JSONResponse(await asyncio.wrap_future(future))
        except RequestError as err:
            return error_response(err)

    @app.post("/v1/question")
    async def question(request: Request) -> JSONResponse:
        try:
            if task != "question":
                raise wrong_task(task)
            future = batcher.submit(parse_question_request(await read_body(request)))
            return JSONResponse(await asyncio.wrap_future(future))
        except RequestError as err:
            return error_response(err)

    created = int(time.time()) if created is None else created
    app.include_router(openai_api.router(batcher, run_name, default_decoding, created))
    return app


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    allow_hosts: Sequence[str] = (),
    max_batch: int = 32,
    queue_size: int = 64,
    api_key: str | None = None,
) -> None:
    """Load the run once, then answer over HTTP until interrupted. `api_key` (default: $JSQUAD_LORA_API_KEY; none
    or empty: no key) is the bearer token every /v1/ route then wants."""
    import uvicorn

    from jsquad_lora.tuned.loaded import load_run_model

    api_key = (os.environ.get(API_KEY_ENV) if api_key is None else api_key) or None
    run = load_run_model(Path(run_dir))
    # the first generation is slow: not a user's
    if run.cfg.task == "question":
        run.write_question("梅雨は東アジアの気象現象である。", "東アジア")
    else:
        run.answer("梅雨は東アジアの気象現象である。", "梅雨はどこの現象か。")
    host = host.removeprefix("[").removesuffix("]")  # uvicorn binds an IPv6 address without its brackets
    name = run.run_dir.resolve().name
    app = create_app(
        run,
        run_name=name,
        default_decoding=run.cfg.eval.decoding,
        host=host,
        allow_hosts=allow_hosts,
        max_batch=max_batch,
        queue_size=queue_size,
        api_key=api_key,
        created=int((run.run_dir / "adapter").stat().st_mtime),  # when the model was trained
        task=run.cfg.task,
    )
    if not app.state.hosts.local_only:
        said = "who has the API key (sent without TLS)" if api_key else "(no authentication)"
        log.warning("serving on %s: anyone who can reach this machine can use the model %s", host, said)
    where = f"[{host}]" if ":" in host else host
    route = "/v1/question" if run.cfg.task == "question" else "/v1/answer"
    log.info("the page: http://%s:%d/  the API: POST http://%s:%d%s", where, port, where, port, route)
    log.info("OpenAI's API: base_url http://%s:%d/v1, model %r", where, port, name)
    if api_key:
        log.info("with the API key the page cannot answer (it sends no key): use the API")
    uvicorn.run(app, host=host, port=port, log_level="info")
