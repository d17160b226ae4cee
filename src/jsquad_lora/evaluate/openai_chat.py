"""The chat-endpoint evaluation backend (`eval.backend=openai`): any OpenAI-compatible chat API answers a run's
questions (ChatGPT, llama.cpp's server, vLLM, Ollama, this tool's `serve`), scored by the same scorers on the same
questions, so that `jsquad-lora report TUNED_RUN CHAT_RUN` pairs the two (docs/chat-models.md).

    jsquad-lora evaluate --output runs/chat data.eval_ids=TUNED_RUN/eval_ids.json eval.backend=openai \
        eval.decoding=greedy eval.openai.base_url=http://127.0.0.1:8080/v1 eval.openai.model=NAME

- Prompt: the run's template (`prompts.fewshot.make_renderer`), sent as chat messages. For `chat`, the very turns
  the template hands a tokenizer's chat template (few-shot examples as earlier user/assistant turns), captured
  instead of rendered (`ChatMessages`): the endpoint applies its own chat template. Any other template: its
  rendered prompt as one user message. The whole passage is sent (no windows): a passage longer than the
  endpoint's context is the endpoint's business. No model, no tokenizer on this machine.
- Decoding: temperature 0, max_tokens = eval.max_new_tokens; the reply is cut as every backend cuts a generation
  (`answer_text`: before the first stop string, whitespace-stripped).
- Reliability: eval.openai.concurrency requests in flight. The `openai` client retries 429, 5xx, timeouts and
  dropped connections (eval.openai.max_retries), with exponential backoff that honours Retry-After. Each answer is
  appended to the predictions log as it arrives (`evaluate.loop`'s `<name>.partial.jsonl`): a killed run resumes
  where it stopped. A question still unanswered after its retries is listed in `failed-<stage>.jsonl` and never
  written as an answer: the command ends with exit 2 saying how many, and the same command again asks only those
  (and any never asked). An endpoint that cannot be reached, or that refuses the key or the model, stops the run at
  once (exit 2), the answers so far kept.
- metrics.json: "endpoint" (URL and model), "usage" (the token counts the endpoint reports, summed over every
  question, each predictions row keeping its own), and "cost" only when eval.openai's prices are given.

Hand-written: lm-evaluation-harness's local-chat-completions has neither these scorers, nor a resumable log, nor
a record of failed questions. The HTTP, the retries and the backoff are the `openai` client's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Sequence

from jsquad_lora.config.schema import EndpointConfig, RunConfig, remote_host
from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError, cut
from jsquad_lora.evaluate.backends import EvalBackend
from jsquad_lora.evaluate.loop import EvalResult, partial_log, prediction_row
from jsquad_lora.evaluate.scorers import SCORERS, answerability_scores, score_predictions
from jsquad_lora.util.files import append_jsonl_lines, write_jsonl
from jsquad_lora.util.jsonio import read_jsonl_prefix

log = logging.getLogger(__name__)
NAME = "eval.backend=openai"
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
#: the key of a client for an endpoint that needs none (a server on this machine): the client wants one
NO_KEY = "none"


def check(mode_name: str) -> None:
    """A clear error, before any work, where a chat endpoint cannot evaluate."""
    if mode_name != "greedy":
        raise InputError(
            NAME,
            f"{mode_name} decoding is this tool's own (a logits processor over the passage): an endpoint generates "
            "freely",
            fix="add eval.decoding=greedy (temperature 0)",
        )
    try:
        import openai  # noqa: F401
    except ImportError:
        raise InputError(
            NAME, "the `openai` package is not installed", fix="pip install -e . (it is a dependency)"
        ) from None


class ChatMessages:
    """Stands in for a tokenizer with a chat template: the `chat` template's messages (the few-shot examples as
    earlier user/assistant turns, then the question's user turn) come back as JSON instead of one rendered string,
    so that the endpoint gets exactly the turns the registered template builds and applies its own chat template."""

    chat_template = "the endpoint's own"  # the `chat` template refuses a tokenizer without one

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True):
        return json.dumps(messages, ensure_ascii=False)


def message_renderer(cfg: RunConfig, fewshot_pool: Sequence[Question]):
    """question → the chat messages of its request, in the run's template (see the module)."""
    from jsquad_lora.prompts.fewshot import make_renderer

    chat = cfg.prompt.template == "chat"
    render = make_renderer(cfg, ChatMessages() if chat else None, fewshot_pool)
    return lambda q: json.loads(render(q)) if chat else [{"role": "user", "content": render(q)}]


def answer_text(reply: str, stop_strings: Sequence[str]) -> str:
    """A reply as an answer, cut as every backend cuts a generation (`generate.greedy.cut_answer` on text):
    before the first stop string (`<NL>`, a newline), whitespace-stripped."""
    for stop in stop_strings:
        if stop and stop in reply:
            reply = reply[: reply.index(stop)]
    return reply.strip()


class _Stop(Exception):
    """The endpoint cannot answer any question (unreachable, or it refuses the key or the model)."""


class _Failed(Exception):
    """One question unanswered after its retries."""


def failed_log(out_path: Path) -> Path:
    """The questions of `out_path`'s evaluation that failed after their retries (predictions-before.jsonl →
    failed-before.jsonl): their ids and errors, rewritten by every try, removed once every question is answered."""
    return out_path.with_name("failed-" + out_path.stem.removeprefix("predictions-") + ".jsonl")


def evaluate_split(
    cfg: RunConfig, questions: Sequence[Question], fewshot_pool: Sequence[Question], out_path: Path
) -> tuple[EvalResult, dict]:
    """Every question answered by the endpoint (resuming from `out_path`'s partial log) and scored with every scorer;
    with the metrics.json entries of the endpoint ("model", "endpoint", "usage", "cost" when priced)."""
    from jsquad_lora.generate.decoding import decoding_config

    start = time.perf_counter()
    settings, decoding = cfg.eval.openai, decoding_config(cfg)
    render = message_renderer(cfg, fewshot_pool)
    partial = partial_log(out_path, 0)
    done, usage = _logged(partial, {q.id for q in questions})
    todo = [q for q in questions if q.id not in done]
    asks = [(q, render(q)) for q in todo]  # a prompt that cannot be rendered fails before any request
    failures: dict[str, str] = {}
    if asks:
        remote = remote_host(settings.base_url)
        (log.warning if remote else log.info)(
            "%d questions and their passages are sent to %s (model %s)%s",
            len(asks),
            settings.base_url,
            settings.model,
            f": they leave this machine (to {remote})" if remote else "",
        )
        if len(asks) < len(questions):
            log.info("%d questions were answered by an earlier try: not asked again", len(questions) - len(asks))
        failures = _ask_all(settings, asks, decoding, partial, done, usage)
    failed = failed_log(out_path)
    if failures:
        write_jsonl(failed, ({"id": qid, "error": failures[qid]} for qid in (q.id for q in todo) if qid in failures))
        first = next(iter(failures.items()))
        raise InputError(
            f"eval.openai.base_url={settings.base_url}",
            f"{len(failures)} of {len(questions)} questions got no answer after {settings.max_retries} retries "
            f"(first: {first[0]}: {first[1]}); they are listed in {failed}, not written as answers",
            fix=f"run the same command again: it resumes in {out_path.parent} and asks only those {len(failures)} "
            "questions (for rate limits: a lower eval.openai.concurrency or a higher eval.openai.max_retries)",
        )
    failed.unlink(missing_ok=True)
    write_jsonl(out_path, (prediction_row(q, done[q.id], _usage_detail(usage.get(q.id))) for q in questions))
    partial.unlink(missing_ok=True)
    scores = {name: score_predictions(questions, done, name).as_dict() for name in SCORERS}
    scores.update(answerability_scores(questions, done))
    result = EvalResult(scores, time.perf_counter() - start, len(questions), len(todo), 0)
    return result, endpoint_metrics(settings, [usage.get(q.id) for q in questions])


def _ask_all(settings: EndpointConfig, asks, decoding, partial: Path, done: dict, usage: dict) -> dict[str, str]:
    """Ask every (question, messages), `settings.concurrency` at a time, logging each answer as it arrives; the
    errors of the questions that failed after their retries (by id). An endpoint that cannot answer at all stops
    every request not yet sent and is an InputError."""
    from tqdm import tqdm

    client = _client(settings)
    for name in ("httpx", "httpx2"):  # the `openai` client's HTTP library (by version): not a log line per request
        logging.getLogger(name).setLevel(logging.WARNING)
    failures: dict[str, str] = {}
    pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="endpoint")
    pending: dict[Future, Question] = {
        pool.submit(_ask, client, settings, messages, decoding.max_new_tokens): q for q, messages in asks
    }
    try:
        with tqdm(total=len(asks), unit="q", desc=f"asking {settings.model}") as bar:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    q = pending.pop(future)
                    try:
                        reply, used = future.result()
                    except _Failed as err:
                        failures[q.id] = str(err)
                        continue
                    finally:
                        bar.update(1)
                    done[q.id], usage[q.id] = answer_text(reply, decoding.stop_strings), used
                    append_jsonl_lines(partial, [{"id": q.id, "prediction": done[q.id], "usage": used}])
    except _Stop as err:
        for future in pending:
            future.cancel()
        answered = len(done)
        raise InputError(
            f"eval.openai.base_url={settings.base_url}",
            f"{err.args[0]}; {answered} questions are answered (kept), none of the others is written as an answer",
            fix=f"{err.args[1]}, then run the same command again: it resumes and asks only the unanswered questions",
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _client(settings: EndpointConfig):
    """The `openai` client of the endpoint: its key from the environment (a server on this machine may need none),
    its timeout and retries."""
    from openai import OpenAI

    key = os.environ.get(settings.api_key_env)
    if not key:
        log.info("$%s is not set: the endpoint is asked without a key (eval.openai.api_key_env)", settings.api_key_env)
    return OpenAI(
        base_url=settings.base_url,
        api_key=key or NO_KEY,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
    )


def _ask(client, settings: EndpointConfig, messages: list[dict], max_tokens: int) -> tuple[str, dict | None]:
    """(the reply's text, its token usage or None) of one request at temperature 0; _Failed where it failed after
    its retries, _Stop where no request can succeed."""
    import openai

    try:
        reply = client.chat.completions.create(
            model=settings.model, messages=messages, temperature=0, max_tokens=max_tokens
        )
    except openai.APITimeoutError:
        raise _Failed(f"no reply within eval.openai.timeout={settings.timeout:g} s") from None
    except openai.APIConnectionError as err:
        raise _Stop(
            f"cannot reach the endpoint ({_cause(err)})", "start the server (or correct eval.openai.base_url)"
        ) from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
        raise _Stop(
            f"the endpoint refused the key ({err.status_code}: {cut(err.message, 300)})",
            f"put the endpoint's key in ${settings.api_key_env} (eval.openai.api_key_env names the variable)",
        ) from None
    except openai.NotFoundError as err:
        raise _Stop(
            f"the endpoint has no model {settings.model!r} or no chat API at this URL ({cut(err.message, 300)})",
            "correct eval.openai.model (GET BASE_URL/models lists them) or eval.openai.base_url (it ends in /v1)",
        ) from None
    except openai.APIStatusError as err:
        raise _Failed(f"{err.status_code}: {cut(err.message, 300)}") from None
    if not reply.choices:
        raise _Failed("the reply holds no choice")
    used = reply.usage
    return reply.choices[0].message.content or "", None if used is None else {k: getattr(used, k) for k in USAGE_KEYS}


def _cause(err: Exception) -> str:
    """The innermost reason of a connection error ("Connection refused"), else the error's own message."""
    while err.__cause__ is not None:
        err = err.__cause__  # type: ignore[assignment]
    return cut(str(err) or type(err).__name__, 200)


def _logged(partial: Path, known: set[str]) -> tuple[dict[str, str], dict[str, dict | None]]:
    """The answers (and their usage) of an earlier try in the partial log, a torn last line dropped."""
    done: dict[str, str] = {}
    usage: dict[str, dict | None] = {}
    for row in read_jsonl_prefix(partial):
        if row.get("id") in known and isinstance(row.get("prediction"), str):
            done[row["id"]], usage[row["id"]] = row["prediction"], row.get("usage")
    return done, usage


def _usage_detail(used: dict | None) -> dict | None:
    return None if used is None else {"usage": used}


def endpoint_metrics(settings: EndpointConfig, usage: Sequence[dict | None]) -> dict[str, Any]:
    """metrics.json's entries of an endpoint's evaluation: the model, the endpoint, the token usage summed (and the
    questions whose reply reported none), and the cost at eval.openai's prices when they are given."""
    reported = [u for u in usage if isinstance(u, dict)]
    totals = {k: sum(int(u.get(k) or 0) for u in reported) for k in USAGE_KEYS}
    out: dict[str, Any] = {
        "model": settings.model,
        "endpoint": {"base_url": settings.base_url, "model": settings.model, "api": "chat.completions"},
        "usage": {**totals, "questions_without_usage": len(usage) - len(reported)},
    }
    if settings.prompt_price_per_million is not None and settings.completion_price_per_million is not None:
        prompt = totals["prompt_tokens"] * settings.prompt_price_per_million / 1e6
        completion = totals["completion_tokens"] * settings.completion_price_per_million / 1e6
        out["cost"] = {
            "total": prompt + completion,
            "prompt": prompt,
            "completion": completion,
            "prompt_price_per_million": settings.prompt_price_per_million,
            "completion_price_per_million": settings.completion_price_per_million,
            "note": "at eval.openai's prices, in their currency; of the tokens the endpoint reported",
        }
        log.info("cost at the prices given: %.4f", out["cost"]["total"])
    log.info("tokens: %d prompt, %d completion", totals["prompt_tokens"], totals["completion_tokens"])
    return out


def _not_here(*args: Any) -> None:
    raise InputError(NAME, "an endpoint answers a whole split (evaluate_split), not inside the local loop")


BACKEND = EvalBackend(
    "openai",
    "an OpenAI-compatible chat endpoint (ChatGPT, llama.cpp's server, vLLM, Ollama, serve), greedy; no local model",
    check,
    _not_here,
    single_process=("an endpoint is asked from one process", "run it without torchrun / accelerate launch"),
    evaluate_split=evaluate_split,
)
