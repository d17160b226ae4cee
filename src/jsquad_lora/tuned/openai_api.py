"""OpenAI's API in `jsquad-lora serve`, beside /v1/answer:

    GET  /v1/models, /v1/models/RUN    the run, as OpenAI's model object (its id: the run directory's name)
    POST /v1/chat/completions          chat.completion (chat.completion.chunk events with "stream": true)
    POST /v1/completions               text_completion: a raw prompt continued

Written here by hand: no library serves OpenAI's API over a batching worker of one's own (vLLM's and
llama.cpp's servers bring their own engines, and the extractive decoding is ours). The requests reach the model
through serve's Batcher, behind the same Host check, API key, body limit and Content-Type rule as /v1/answer;
every refusal on these routes is OpenAI's `{"error": {"message", "type", "param", "code"}}`.

- A passage question through chat: the body fields `context`, `question` (else the last user message's text) and
  `decoding` (optional) make the reply the very answer POST /v1/answer gives, by the same batched generation.
- Otherwise the conversation is written in the run's prompt format (LoadedRun.chat_prompt) and continued
  greedily, not extractively, ending at the run's stop strings (a line break) as its answers do; a user message
  written as the run's prompt writes a question gets the run's greedy answer. /v1/completions continues `prompt`
  as it is, ending only at EOS, a `stop` string or `max_tokens`.
- Decoding is greedy, so `temperature` must be absent or 0 and `n` 1; the parameters OpenAI's clients send
  with values that change nothing are accepted (NEUTRAL), a few are ignored (IGNORED), any other is refused.
- Streaming: the events are sent together once the text is generated (generation is not incremental).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from jsquad_lora.errors import InputError, cut
from jsquad_lora.generate.decoding import DecodingConfig
from jsquad_lora.tuned.ask import MAX_ASK_CONTEXT_CHARS, MAX_ASK_QUESTION_CHARS
from jsquad_lora.tuned.serving import (
    ECHO_CHARS,
    MAX_ERROR_CHARS,
    Batcher,
    Job,
    RequestError,
    _json_type,
    echo,
    json_object,
    question_of,
    read_body,
)
from jsquad_lora.util.jsonio import lone_surrogate

PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions")
#: the most tokens one free generation may ask for (it holds the worker alone); the prompt and these tokens
#: must also fit the run's model.max_length
MAX_COMPLETION_TOKENS = 256
#: a conversation's or prompt's characters in all: the passage and question limits of /v1/answer together
MAX_PROMPT_CHARS = MAX_ASK_CONTEXT_CHARS + MAX_ASK_QUESTION_CHARS
MAX_STOPS = 4
#: where a free chat reply ends besides EOS: the run's answers' stop strings (<NL>, a newline)
CHAT_STOPS = DecodingConfig().stop_strings
ROLES = ("system", "developer", "user", "assistant")
#: parameters accepted with these values only, the ones that change nothing in greedy decoding
NEUTRAL = {
    "n": (1,),
    "best_of": (1,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logprobs": (False, 0),
    "echo": (False,),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
}
#: parameters accepted and ignored: who asks (user, metadata), storage and tiers, a seed (greedy needs none)
IGNORED = ("user", "seed", "metadata", "store", "service_tier")
COMMON = ("model", "max_tokens", "stop", "stream", "stream_options", "temperature", "top_p", *NEUTRAL, *IGNORED)
CHAT_FIELDS = (*COMMON, "messages", "max_completion_tokens", "context", "question", "decoding")
COMPLETION_FIELDS = (*COMMON, "prompt")
SHAPE = "send a JSON object as OpenAI's API takes it"


def is_openai_path(path: str) -> bool:
    return path in PATHS or path.startswith("/v1/models/")


def error_response(err: RequestError, headers: dict | None = None) -> Response:
    """A refusal in OpenAI's shape; 422 (a field that is wrong) is OpenAI's 400. It never raises: each string is
    bounded, and a reply that still cannot be encoded is escaped to ASCII."""
    status = 400 if err.status == 422 else err.status
    problem, param, fix = (err.body[k] for k in ("error", "field", "fix"))
    error = {
        "message": cut(f"{problem} (fix: {fix})" if fix else problem, MAX_ERROR_CHARS),
        "type": "server_error" if status >= 500 else "invalid_request_error",
        "param": None if param is None else cut(str(param), ECHO_CHARS),
        "code": err.code,
    }
    headers = {**(headers or {}), **({"Retry-After": "1"} if status == 503 else {})}
    try:
        return JSONResponse({"error": error}, status_code=status, headers=headers)
    except Exception:  # noqa: BLE001 (the last resort: an error reply must not become a plain 500)
        return Response(json.dumps({"error": error}, default=repr), status, headers, "application/json")


def _bad(problem: str, param: str | None, code: str | None = None, status: int = 400) -> RequestError:
    return RequestError(status, problem, param, code=code)


def _no_model(name: Any, run_name: str) -> RequestError:
    said = echo(name) if isinstance(name, str) else _json_type(name)
    return _bad(f"the model {said} does not exist: this server serves {run_name!r}", "model", "model_not_found", 404)


def _text(value: Any, param: str) -> str:
    """`value` as a request's text: a string that is valid Unicode."""
    if not isinstance(value, str):
        raise _bad(f"{param} must be a string, not {_json_type(value)}", param)
    if (found := lone_surrogate(value)) is not None:
        raise _bad(f"{param} holds {found}, which is not a character", param)
    return value


@dataclass(frozen=True)
class Settings:
    """What a request asks of its generation and reply."""

    max_tokens: int | None  # None: the run's eval.max_new_tokens
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def settings_of(data: dict, fields: tuple[str, ...], run_name: str) -> Settings:
    """The common parameters of a chat or completion body, checked (a null is an absent parameter)."""
    if "model" not in data:
        raise _bad("missing parameter 'model'", "model")
    if data["model"] != run_name:
        raise _no_model(data["model"], run_name)
    if unknown := [k for k in data if k not in fields]:
        raise _bad(f"unknown parameter {echo(unknown[0])}", unknown[0], "unknown_parameter")
    for name, values in NEUTRAL.items():
        value = data.get(name)
        if name in data and not any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in values):
            raise _bad(f"{name} {echo(json.dumps(value))} is not supported: only {values[0]!r} (greedy decoding)", name)
    if data.get("temperature", 0) != 0 or isinstance(data.get("temperature"), bool):
        raise _bad("only greedy decoding is supported: temperature must be 0 or absent", "temperature")
    top_p = data.get("top_p", 1)
    if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise _bad("top_p must be a number in (0, 1] (greedy's token is in every nucleus)", "top_p")
    name = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
    limit = data.get(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _bad(f"{name} must be a positive integer", name)
    if limit is not None and limit > MAX_COMPLETION_TOKENS:
        raise _bad(f"{name} is too large: {limit}; this server generates at most {MAX_COMPLETION_TOKENS}", name)
    stop = data.get("stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOPS:
        raise _bad(f"stop must be a string or a list of at most {MAX_STOPS} strings", "stop")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"stream must be true or false, not {_json_type(stream)}", "stream")
    options = data.get("stream_options", {})
    if "stream_options" in data and not stream:
        raise _bad("stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise _bad('stream_options must be an object like {"include_usage": true}', "stream_options")
    return Settings(limit, tuple(_text(s, "stop") for s in stop), stream, options.get("include_usage", False))


def messages_of(value: Any) -> list[dict[str, str]]:
    """The conversation of a chat body as {"role", "content"} dicts (roles system, user, assistant), a content's
    text parts joined."""
    if not isinstance(value, list):
        raise _bad(f"messages must be a list, not {_json_type(value)}", "messages")
    messages = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES or not set(m) <= {"role", "content", "name"}:
            raise _bad(f'{where} must be {{"role", "content"}} with a role of {", ".join(ROLES)}', where)
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise _bad(f"{where}.content: only text parts are supported", f"{where}.content")
            content = "".join(_text(p.get("text"), f"{where}.content") for p in content)
        role = "system" if m["role"] == "developer" else m["role"]  # OpenAI's new name for a system message
        messages.append({"role": role, "content": _text(content, f"{where}.content")})
    if (size := sum(len(m["content"]) for m in messages)) > MAX_PROMPT_CHARS:
        raise _bad(f"messages too long: {size} characters (the limit is {MAX_PROMPT_CHARS})", "messages", status=413)
    return messages


def prompt_of(value: Any) -> str:
    """The prompt of a completion body: a string, or a list of one string."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value:
        raise _bad("prompt must be a non-empty string (or a list of one)", "prompt")
    if len(value) > MAX_PROMPT_CHARS:
        raise _bad(f"prompt too long: {len(value)} characters (the limit is {MAX_PROMPT_CHARS})", "prompt", status=413)
    return _text(value, "prompt")


def free_generation(prompt: str | list[dict[str, str]], settings: Settings) -> Job:
    """The worker's job for a conversation (its reply stripped, ended at CHAT_STOPS too) or a raw prompt:
    (text, finish_reason, usage)."""

    def work(run) -> tuple[str, str, dict]:
        chat = not isinstance(prompt, str)
        text = run.chat_prompt(prompt) if chat else prompt
        try:
            completion, finish = run.complete(
                text, settings.max_tokens, (*CHAT_STOPS, *settings.stop) if chat else settings.stop
            )
        except InputError as err:  # the prompt and max_tokens do not fit model.max_length
            raise RequestError(400, err.problem, err.source, err.fix, code="context_length_exceeded") from None
        completion = completion.strip() if chat else completion
        return completion, finish, run.usage(text, completion)

    return Job(work)


def _reply(head: dict, kind: str, choices: list[dict], usage: dict, settings: Settings) -> Response:
    """The JSON object, or with `stream` its chunks (one per choice) as server-sent events ending in [DONE];
    with stream_options.include_usage every chunk has "usage": null and a last one without choices holds it."""
    if not settings.stream:
        return JSONResponse({**head, "object": kind, "choices": choices, "usage": usage})
    kind = "chat.completion.chunk" if kind == "chat.completion" else kind
    extra = {"usage": None} if settings.include_usage else {}
    chunks = [{**head, "object": kind, "choices": [choice], **extra} for choice in choices]
    chunks += [{**head, "object": kind, "choices": [], "usage": usage}] if settings.include_usage else []
    events = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return Response(events.encode(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _head(prefix: str, run_name: str) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": run_name}


def router(batcher: Batcher, run_name: str, default_decoding: str, created: int) -> APIRouter:
    """The OpenAI routes of one run, answered by `batcher`."""
    api = APIRouter()
    model = {"id": run_name, "object": "model", "created": created, "owned_by": "jsquad-lora"}

    async def body_of(request: Request, fields: tuple[str, ...]) -> tuple[dict, Settings]:
        data = {k: v for k, v in json_object(await read_body(request), SHAPE).items() if v is not None}
        return data, settings_of(data, fields, run_name)

    @api.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model]}

    @api.get("/v1/models/{name:path}")
    async def one_model(name: str) -> Response:
        return JSONResponse(model) if name == run_name else error_response(_no_model(name, run_name))

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            data, settings = await body_of(request, CHAT_FIELDS)
            messages = messages_of(data.get("messages"))
            if "context" in data:  # a passage question: /v1/answer's answer
                asked = [m["content"] for m in messages if m["role"] == "user"]
                if "question" not in data and not asked:
                    raise _bad("no question: send question, or a user message", "question")
                fields = {"question": asked[-1]} if "question" not in data else {}
                fields |= {k: data[k] for k in ("context", "question", "decoding") if k in data}
                found = await asyncio.wrap_future(batcher.submit(question_of(fields, default_decoding, True)))
                text, finish, usage = found["answer"] or "", "stop", found["usage"]  # abstained: no text
            else:
                if given := [k for k in ("question", "decoding") if k in data]:
                    raise _bad(f"{given[0]} is read only with context (a passage question)", given[0])
                if not messages:
                    raise _bad("messages must hold at least one message", "messages")
                job = batcher.submit(free_generation(messages, settings))
                text, finish, usage = await asyncio.wrap_future(job)
            message = {"role": "assistant", "content": text}
            if not settings.stream:
                choices = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
            else:
                deltas = [{"role": "assistant", "content": ""}, *([{"content": text}] if text else []), {}]
                choices = [
                    {"index": 0, "delta": d, "logprobs": None, "finish_reason": None if d else finish} for d in deltas
                ]
            return _reply(_head("chatcmpl", run_name), "chat.completion", choices, usage, settings)
        except RequestError as err:
            return error_response(err)

    @api.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            data, settings = await body_of(request, COMPLETION_FIELDS)
            job = batcher.submit(free_generation(prompt_of(data.get("prompt")), settings))
            text, finish, usage = await asyncio.wrap_future(job)
            parts = [(text, None), ("", finish)] if settings.stream else [(text, finish)]
            choices = [{"text": t, "index": 0, "logprobs": None, "finish_reason": f} for t, f in parts]
            return _reply(_head("cmpl", run_name), "text_completion", choices, usage, settings)
        except RequestError as err:
            return error_response(err)

    return api
