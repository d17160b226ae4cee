"""Where generated questions come from: a question-generation run of this tool (task=question, on this
machine), or any OpenAI-compatible chat endpoint (llama.cpp's server, vLLM, Ollama, this tool's `serve`).

Both take passages with their answer candidates and give `Proposal`s; neither is trusted: the caller checks
every pair (data/qa_checks.py). The endpoint is asked for JSON; a reply that is not the JSON asked for is
counted (`not_json`), never a crash. Hand-written: no library turns a QA model into a question generator.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from jsquad_lora.data.candidates import Candidate
from jsquad_lora.data.documents import Passage
from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError
from jsquad_lora.questions.local import LocalRun

log = logging.getLogger(__name__)
#: passages are cut to this many characters when no tokenizer measures them (an endpoint without a filter run)
ENDPOINT_PASSAGE_CHARS = 600


@dataclass(frozen=True)
class Proposal:
    """A generated (question, answer) on one passage; `hint`: where the candidate (or the generator) says the
    answer starts, never trusted; `kind`: the candidate's kind, or "generator" for an answer the generator chose."""

    question: str
    answer: str
    hint: int | None
    kind: str


class RunGenerator(LocalRun):
    """A finished task=question run: one greedy question per (passage, answer candidate), batched."""

    def __init__(self, run_dir: str | Path):
        super().__init__(
            run_dir,
            "question",
            "--generator",
            "is a run of task=answer: it answers questions, it does not write them",
            "train a question generator on your labelled questions (jsquad-lora run --config "
            "gemma-3-270m-question --output QG_DIR) and pass --generator QG_DIR",
        )

    def passage_tokens(self) -> int:
        """The passage tokens one prompt of this run holds, with room for a long candidate answer."""
        return self.prompt_room("回" * 24)

    def propose(
        self, passages: Sequence[Passage], candidates: Sequence[Sequence[Candidate]] | None, per_passage: int = 3
    ) -> list[tuple[list[Proposal], str | None]]:
        """Per passage: a question for each of its candidates (and no reject of the passage's request)."""
        if candidates is None:
            raise InputError(
                "--candidates generator",
                "a question-generation run writes questions for given answers; it does not choose them",
                fix="use --candidates mecab with --generator RUN_DIR (or --generator-url for an endpoint that chooses)",
            )
        asks = [(k, c) for k, cs in enumerate(candidates) for c in cs]
        prompts = [
            self.run.render(Question("qg", passages[k].title, passages[k].text, c.text, (), ())) for k, c in asks
        ]
        texts: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            texts += self.run.generate(chunk, [""] * len(chunk), "greedy")
        out: list[tuple[list[Proposal], str | None]] = [([], None) for _ in passages]
        for (k, c), text in zip(asks, texts):
            out[k][0].append(Proposal(text.strip(), c.text, c.start, c.kind))
        return out


#: the endpoint's requests: questions for given answers (mecab candidates), or pairs it chooses (generator)
FOR_ANSWERS = (
    "次の文章について、与えた回答それぞれが答えになる質問を日本語で1つずつ作ってください。"
    '出力は JSON の配列 [{"answer": 回答, "question": 質問}, ...] だけにしてください。\n文章:{passage}\n回答:{answers}'
)
CHOOSE_PAIRS = (
    "次の文章から、文章中の語句そのものが答えになる質問と答えの組を{n}個、日本語で作ってください。"
    "答えは文章からそのまま抜き出した短い語句にしてください。"
    '出力は JSON の配列 [{"question": 質問, "answer": 答え}, ...] だけにしてください。\n文章:{passage}'
)


class EndpointGenerator:
    """An OpenAI-compatible chat endpoint, asked once per passage for JSON question/answer pairs, temperature 0.
    The key is read from the environment variable `api_key_env` (a local server needs none)."""

    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0):
        from openai import OpenAI

        self.url, self.model = url, model
        self.client = OpenAI(base_url=url, api_key=os.environ.get(api_key_env) or "none", timeout=timeout)
        self.name = f"endpoint:{model}@{url}"
        self.batch_size = 1

    def count_tokens(self, text: str) -> int:
        return len(text)

    def passage_tokens(self) -> None:
        return None  # no local tokenizer: the filter run's window, else ENDPOINT_PASSAGE_CHARS characters

    def propose(
        self, passages: Sequence[Passage], candidates: Sequence[Sequence[Candidate]] | None, per_passage: int = 3
    ) -> list[tuple[list[Proposal], str | None]]:
        out = []
        for k, passage in enumerate(passages):
            chosen = candidates[k] if candidates is not None else None
            if chosen is not None and not chosen:
                out.append(([], None))
                continue
            if chosen is not None:
                answers = json.dumps([c.text for c in chosen], ensure_ascii=False)
                request = FOR_ANSWERS.replace("{passage}", passage.text).replace("{answers}", answers)
            else:
                request = CHOOSE_PAIRS.replace("{passage}", passage.text).replace("{n}", str(per_passage))
            reply = self._ask(request)
            pairs = parse_pairs(reply) if reply is not None else None
            if pairs is None:
                out.append(([], "not_json" if reply is not None else "endpoint_refused"))
                continue
            hints = {c.text: (c.start, c.kind) for c in chosen or ()}
            proposals = [
                Proposal(q, a, *(hints.get(a.strip()) or (None, "generator" if chosen is None else "mecab")))
                for q, a in pairs
            ]
            out.append((proposals[: len(chosen) if chosen is not None else per_passage], None))
        return out

    def _ask(self, request: str) -> str | None:
        """The reply's text; None where the endpoint refuses this request (400, 413, 422: a passage too long for
        its context, say), a counted reject. Any other failure stops the command (it resumes)."""
        from openai import APIConnectionError, APIStatusError

        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": request}], temperature=0
            )
        except APIConnectionError as err:
            raise InputError(
                self.url, f"cannot reach the generator endpoint ({err})", where="--generator-url",
                fix="start the server (or correct the URL), then run the same command again: it resumes",
            ) from None  # fmt: skip
        except APIStatusError as err:
            if err.status_code in (400, 413, 422):
                log.debug("the endpoint refused a passage: %s", err.message)
                return None
            raise InputError(
                self.url, f"the generator endpoint answered {err.status_code}: {err.message}", where="--generator-url",
                fix="check --generator-model and the key's environment variable, then run the same command again",
            ) from None  # fmt: skip
        return reply.choices[0].message.content or ""


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def parse_pairs(reply: str) -> list[tuple[str, str]] | None:
    """(question, answer) pairs of a reply holding a JSON array of {"question", "answer"} objects (code fences
    and text around the array tolerated), or None when it holds no such array."""
    text = _FENCE.sub("", reply.strip())
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        items = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if not isinstance(items, list):
        return None
    pairs = [
        (item["question"], item["answer"])
        for item in items
        if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str)
    ]
    return pairs if pairs or not items else None
