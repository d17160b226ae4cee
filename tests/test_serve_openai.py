"""`jsquad-lora serve`'s OpenAI routes, used with the official `openai` client over real HTTP (uvicorn on a free
localhost port) on a tiny run: the model list, chat and completions (and their streams) with token counts the
run's tokenizer gives, a passage question through chat answering exactly what /v1/answer answers, a free chat
message in the run's prompt format getting the run's greedy answer, and every refusal in OpenAI's shape, as the
client's typed exception."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from conftest import TINY_TEST, needs_data
from test_serve import dev_questions, post, running

from jsquad_lora.cli import main
from jsquad_lora.encoding.tokens import answer_ids, prompt_ids
from jsquad_lora.generate.greedy import generate_free
from jsquad_lora.prompts.templates import NL, SEED_INSTRUCTION
from jsquad_lora.tuned import openai_api
from jsquad_lora.tuned.access import API_KEY_ENV
from jsquad_lora.tuned.loaded import load_run_model
from jsquad_lora.tuned.serve import create_app
from jsquad_lora.tuned.serving import MAX_BODY_BYTES

pytestmark = needs_data()
KEY = "sk-test-0123456789"
CREATED = 1_700_000_000


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-openai") / "tiny"
    assert main(["run", "--output", str(out), *TINY_TEST, "eval.dtype=float32"]) == 0
    return load_run_model(out)


@pytest.fixture(scope="module")
def server(loaded):
    app = create_app(
        loaded, run_name="tiny", default_decoding=loaded.cfg.eval.decoding, api_key=KEY, created=CREATED, wait_s=0.2
    )
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)


def raw(url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, headers, JSON body) of a plain HTTP request; error statuses too."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def whole(questions):
    """The questions whose passage fits the tiny run's prompt whole (none of it cut)."""
    return [q for q in questions if len(q.context) < 400]


def usage_of(loaded, prompt: str, completion: str) -> dict:
    counts = len(prompt_ids(loaded.tokenizer, prompt)), len(answer_ids(loaded.tokenizer, completion))
    return {"prompt_tokens": counts[0], "completion_tokens": counts[1], "total_tokens": sum(counts)}


def test_models_list_the_run(client):
    assert [(m.id, m.object, m.created, m.owned_by) for m in client.models.list().data] == [
        ("tiny", "model", CREATED, "jsquad-lora")
    ]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"


def test_a_passage_question_through_chat_is_the_answer_routes_answer(client, server, loaded):
    questions = dev_questions(8)
    asks = [
        # (extra body, the user message): the question as a field, or as the last user message
        ({"context": q.context, "question": q.question}, "(ignored)")
        if i % 2
        else ({"context": q.context, **({"decoding": "greedy"} if i % 4 == 2 else {})}, q.question)
        for i, q in enumerate(questions)
    ]

    def chat(ask):
        extra, said = ask
        return client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": said}], extra_body=extra
        )

    def answer(ask):
        extra, said = ask
        body = {"question": said, **extra}
        return post(server + "/v1/answer", body, headers={"Authorization": f"Bearer {KEY}"})

    with ThreadPoolExecutor(2 * len(asks)) as pool:  # sent together: chat and /v1/answer share batches
        chats = pool.map(chat, asks)
        answers = pool.map(answer, asks)
        chats, answers = list(chats), list(answers)
    assert [status for status, _ in answers] == [200] * len(asks)
    assert [c.choices[0].message.content for c in chats] == [a["answer"] or "" for _, a in answers]
    assert sum(bool(a["answer"]) for _, a in answers) >= len(asks) // 2  # answers, not empty strings
    for (extra, said), reply, (_, found) in zip(asks, chats, answers):
        question = extra.get("question", said)
        assert found["answer"] == loaded.answer(extra["context"], question, extra.get("decoding"))
        assert (reply.object, reply.model, reply.choices[0].message.role) == ("chat.completion", "tiny", "assistant")
        assert reply.choices[0].finish_reason == "stop" and reply.id.startswith("chatcmpl-")
        prompt = loaded.prompt(extra["context"], question)[0]
        assert reply.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == usage_of(
            loaded, prompt, found["answer"] or ""
        )


def test_a_chat_message_in_the_runs_prompt_format_gets_its_greedy_answer(client, loaded):
    for q in whole(dev_questions(12))[:4]:
        said = f"{SEED_INSTRUCTION}{NL}文章:{q.context}{NL}質問:{q.question}"
        messages = [{"role": "user", "content": said}]
        assert loaded.chat_prompt(messages) == loaded.prompt(q.context, q.question)[0]
        reply = client.chat.completions.create(model="tiny", messages=messages, temperature=0, seed=7, user="me")
        assert reply.choices[0].message.content == (loaded.answer(q.context, q.question, "greedy") or "")
        assert reply.usage.prompt_tokens == len(prompt_ids(loaded.tokenizer, loaded.chat_prompt(messages)))
    conversation = [
        {"role": "developer", "content": "前置き"},
        {"role": "user", "content": "一"},
        {"role": "assistant", "content": "二"},
        {"role": "user", "content": [{"type": "text", "text": "三"}, {"type": "text", "text": "四"}]},
    ]
    reply = client.chat.completions.create(model="tiny", messages=conversation, max_tokens=3)
    prompt = f"前置き{NL}ユーザー: 一{NL}システム: 二{NL}ユーザー: 三四{NL}システム: "
    as_read = [{"role": "system", "content": "前置き"}, *conversation[1:3], {"role": "user", "content": "三四"}]
    assert loaded.chat_prompt(as_read) == prompt
    assert reply.usage.prompt_tokens == len(prompt_ids(loaded.tokenizer, prompt))
    assert reply.usage.completion_tokens <= 3


def test_a_chat_message_in_a_chat_template_runs_format_is_its_prompt(loaded):
    from jsquad_lora.prompts.fewshot import make_renderer

    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    )
    cfg = dataclasses.replace(loaded.cfg, prompt=dataclasses.replace(loaded.cfg.prompt, template="chat"))
    run = dataclasses.replace(loaded, cfg=cfg, tokenizer=tokenizer, render=make_renderer(cfg, tokenizer, ()))
    q = whole(dev_questions(4))[0]
    said = f"{SEED_INSTRUCTION}\n文章:{q.context}\n質問:{q.question}"
    assert run.chat_prompt([{"role": "user", "content": said}]) == run.prompt(q.context, q.question)[0]
    assert (
        run.chat_prompt([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
        == "<system>s\n<user>u\n<a>"
    )


def _new_character(text: str) -> int | None:
    """The first position from 2 on whose character is not earlier in `text`."""
    return next((k for k in range(2, len(text)) if text[k] not in text[:k]), None)


def test_completions_continue_the_prompt_greedily_to_max_tokens_or_a_stop(client, loaded):
    questions = whole(dev_questions(12))
    prompts = [f"ユーザー: {q.question}" for q in questions] + [
        loaded.prompt(q.context, q.question)[0] for q in questions
    ]
    # plain greedy to EOS, by another function; a continuation of 3 tokens or more, not one character repeated
    prompt, expected = next(
        (p, t)
        for p in prompts
        if _new_character(t := generate_free(loaded.model, loaded.tokenizer, p, 24))
        and len(answer_ids(loaded.tokenizer, t)) > 2
    )
    full = client.completions.create(model="tiny", prompt=prompt, max_tokens=24)
    text = full.choices[0].text
    assert full.object == "text_completion" and full.id.startswith("cmpl-")
    assert text.strip() == expected
    assert full.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == usage_of(
        loaded, prompt, text
    )
    assert full.choices[0].finish_reason == ("length" if full.usage.completion_tokens == 24 else "stop")
    cut = client.completions.create(model="tiny", prompt=[prompt], max_tokens=2)
    assert (cut.choices[0].finish_reason, cut.usage.completion_tokens) == ("length", 2)
    assert text.startswith(cut.choices[0].text) and cut.choices[0].text != text
    k = _new_character(text)
    stops = [text[k], "\u3000never", text[k - 2 : k + 1]]  # both first seen at k: cut before the one starting first
    stopped = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, stop=stops)
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == (text[: k - 2], "stop")


def test_streams_hold_the_same_reply_in_chunks(client, loaded):
    q = dev_questions(1)[0]
    ask = {"model": "tiny", "messages": [{"role": "user", "content": q.question}], "extra_body": {"context": q.context}}
    whole_reply = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole_reply.choices[0].message.content
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole_reply.usage
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.chat.completions.create(**ask, stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)

    prompt = loaded.prompt(q.context, q.question)[0]
    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=8)
    chunks = list(
        client.completions.create(
            model="tiny", prompt=prompt, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    assert {c.object for c in chunks} == {"text_completion"}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, done.choices[0].finish_reason]
    assert chunks[-1].usage == done.usage


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "梅雨とは?"}]}
BAD_CHATS = [
    # (parameters, the param the 400 names)
    ({"n": 2}, "n"),
    ({"temperature": 0.7}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": openai_api.MAX_COMPLETION_TOKENS + 1}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"extra_body": {"unheard_of": 1}}, "unheard_of"),
    ({"extra_body": {"question": "q"}}, "question"),
    ({"extra_body": {"context": "梅雨は東アジアの気象現象。", "decoding": "beam"}}, "decoding"),
    ({"extra_body": {"context": " ", "question": "q"}}, "context/question"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
]


def test_refusals_are_openais_errors_as_the_clients_exceptions(client, server):
    for params, param in BAD_CHATS:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**{**CHAT, **params})
        assert (info.value.param, info.value.type) == (param, "invalid_request_error"), (params, info.value.body)
        assert info.value.message, params
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(**{**CHAT, "model": "gpt-4o"})
    assert (info.value.code, info.value.param) == ("model_not_found", "model")
    for params, param in (
        ({"extra_body": {"context": "あ" * 20_001, "question": "q"}}, "context"),
        ({"messages": [{"role": "user", "content": "あ" * (openai_api.MAX_PROMPT_CHARS + 1)}]}, "messages"),
    ):
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(**{**CHAT, **params})
        assert (info.value.status_code, info.value.param) == (413, param), info.value.body
    for prompt, code in (("あ" * 700, "context_length_exceeded"), ([1, 2, 3], None), ("", None)):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="tiny", prompt=prompt)
        assert info.value.code == code and info.value.param in ("prompt", "max_tokens"), info.value.body
    for key in ("wrong", KEY + "x", KEY[:-1]):
        with pytest.raises(openai.AuthenticationError) as info:
            openai.OpenAI(base_url=server + "/v1", api_key=key, max_retries=0).models.list()
        assert info.value.code == "invalid_api_key"
    assert client.chat.completions.create(**CHAT).choices[0].finish_reason in ("stop", "length")  # it goes on


def test_plain_http_refusals_keep_each_routes_shape(server):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    chat = server + "/v1/chat/completions"
    body = json.dumps(CHAT).encode()
    for url, data, headers, method, status in (
        (chat, body, {"Content-Type": "application/json"}, None, 401),  # no key
        (chat, body, {**auth, "Authorization": "Basic " + KEY}, None, 401),
        (chat, body, {**auth, "Content-Type": "text/plain"}, None, 415),
        (chat, b'{"model": "tiny", ', auth, None, 400),
        (chat, b'{"model": "tiny", "model": "tiny"}', auth, None, 400),
        (chat, b"[]", auth, None, 400),
        (chat, b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}', auth, None, 400),
        (chat, b'{"model": "' + b"x" * MAX_BODY_BYTES + b'"}', auth, None, 413),
        (chat, None, auth, "GET", 405),
        (server + "/v1/models", None, {**auth, "Host": "evil.example"}, None, 400),
        (server + "/v1/models/other", None, auth, None, 404),
    ):
        code, got, reply = raw(url, data, headers, method)
        assert code == status, (url, status, reply)
        assert set(reply) == {"error"} and set(reply["error"]) == {"message", "type", "param", "code"}, reply
        assert reply["error"]["message"] and reply["error"]["type"] == "invalid_request_error", reply
        if status == 401:
            assert got["WWW-Authenticate"] == "Bearer" and reply["error"]["code"] == "invalid_api_key"
    # /v1/answer and /v1/health want the key too, and refuse in their own shape; the page needs none
    for url, data in ((server + "/v1/answer", b'{"context": "a", "question": "q"}'), (server + "/v1/health", None)):
        code, _, reply = raw(url, data, {"Content-Type": "application/json"})
        assert code == 401 and set(reply) == {"error", "field", "fix"} and reply["field"] == "Authorization"
    assert raw(server + "/v1/health", None, auth)[0] == 200
    with urllib.request.urlopen(server + "/", timeout=10) as response:
        assert response.status == 200


class Standin:
    """A run answering at once: a free generation echoes its prompt's last character (`asked`: what it was
    asked for); "wait" blocks until `release`, "boom" fails, "surrogate" returns a text no encoder takes."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.asked: tuple = ()

    def chat_prompt(self, messages):
        return messages[-1]["content"]

    def complete(self, prompt, max_new_tokens, stop):
        self.asked = (prompt, max_new_tokens, stop)
        if prompt == "wait":
            self.started.set()
            self.release.wait(timeout=30)
        if prompt == "boom":
            raise RuntimeError("boom")
        return ("\ud800" if prompt == "surrogate" else prompt[-1]), "stop"

    def usage(self, prompt, completion):
        return {"prompt_tokens": len(prompt), "completion_tokens": len(completion), "total_tokens": 0}


def test_busy_failing_and_unencodable_replies_are_openais_server_errors():
    run = Standin()
    app = create_app(run, run_name="stand-in", default_decoding="greedy", max_batch=1, queue_size=1, wait_s=0)
    with running(app) as url, ThreadPoolExecutor(2) as pool:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none needed", max_retries=0)

        def say(text: str):
            return client.chat.completions.create(model="stand-in", messages=[{"role": "user", "content": text}])

        first = pool.submit(say, "wait")
        assert run.started.wait(timeout=20)  # the worker holds the first request
        second = pool.submit(say, "xy")
        deadline = time.monotonic() + 20
        while app.state.batcher.queue.qsize() < 1:  # the second waits in the queue
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(openai.InternalServerError) as info:
            say("full")
        assert (info.value.status_code, info.value.type) == (503, "server_error")
        assert info.value.response.headers["Retry-After"] == "1" and "busy" in info.value.message
        run.release.set()
        assert (first.result(timeout=30).choices[0].message.content, second.result(timeout=30).usage.prompt_tokens) == (
            "t",
            2,
        )
        for text, said in (("boom", "RuntimeError"), ("surrogate", "internal error")):
            with pytest.raises(openai.InternalServerError) as info:
                say(text)
            assert info.value.status_code == 500 and info.value.type == "server_error" and said in info.value.message
        assert say("ok").choices[0].message.content == "k"  # and it goes on
        assert run.asked == ("ok", None, (NL, "\n"))  # a chat reply ends at the run's stop strings too
        reply = client.chat.completions.create(
            model="stand-in", messages=[{"role": "user", "content": "ab"}], max_tokens=5, stop="x"
        )
        assert reply.choices[0].message.content == "b" and run.asked == ("ab", 5, (NL, "\n", "x"))
        reply = client.completions.create(model="stand-in", prompt="cd ", max_tokens=7, stop=["y", "z"])
        assert reply.choices[0].text == " " and run.asked == ("cd ", 7, ("y", "z"))  # as it is: not stripped


def test_the_docs_state_the_openai_rules():
    docs = (Path(__file__).parents[1] / "docs" / "using-a-run.md").read_text(encoding="utf-8")
    section = docs.split("## serve:")[1].split("\n## ")[0].replace("\n  ", " ").replace("\n", " ")
    for stated in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "--api-key",
        API_KEY_ENV,
        f"at most {openai_api.MAX_COMPLETION_TOKENS} tokens",
        f"{openai_api.MAX_PROMPT_CHARS:,} characters",
        'extra_body={"context"',
    ):
        assert stated in section, stated
