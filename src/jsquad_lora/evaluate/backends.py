"""Evaluation backends (registered in `registry.EVAL_BACKENDS`): what generates a run's answers.

A backend is a check, run before any work (a clear error where it cannot run: a decoding mode it does not
implement, a missing package or GPU), and an `answerer(cfg, run_dir, model, tokenizer, adapter, engines)`:
the answer function `evaluate` calls, or None for the transformers generation of `generate.greedy` (the
"hf" backend). vLLM's entry is lazy ("module:attr"): its module is imported only when a config names it.
A backend with `evaluate_split` answers a whole split itself with no model on this machine (a chat endpoint:
"openai"): the recipe then loads no weights and no tokenizer for it.
Adding a backend is one `EVAL_BACKENDS.register` call here (its module registers nothing else).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

from jsquad_lora.registry import EVAL_BACKENDS


@dataclass(frozen=True)
class EvalBackend:
    name: str
    help: str
    #: check(decoding mode name): an InputError, before any work, where the backend cannot run
    check: Callable[[str], None]
    #: answerer(cfg, run_dir, model, tokenizer, adapter, engines) -> generator(prompts, decoding, on_batch), or
    #: None: generate.greedy's batched generation with the HF model
    answerer: Callable[..., Any]
    #: resources() -> a context manager holding what the backend keeps for one job (vLLM: its engines), given
    #: to `answerer` as `engines` and released when the job ends
    resources: Callable[[], Any] = contextlib.nullcontext
    #: (why, fix) where the backend runs in one process only; None: it runs under torchrun / accelerate launch too
    single_process: tuple[str, str] | None = None
    #: evaluate_split(cfg, questions, fewshot_pool, out_path) -> (evaluate.loop.EvalResult, entries for metrics.json):
    #: a backend that answers a split with no local model, tokenizer or windows (a chat endpoint); None: `answerer`
    #: generates inside evaluate.loop.evaluate with the run's model
    evaluate_split: Callable[..., Any] | None = None


def _no_check(mode: str) -> None:
    return None


def _hf_answerer(*args: Any) -> None:
    return None  # evaluate generates with the HF model itself


EVAL_BACKENDS.register(
    "hf", EvalBackend("hf", "transformers generation, batched, in every decoding mode", _no_check, _hf_answerer)
)
EVAL_BACKENDS.register("vllm", "jsquad_lora.evaluate.vllm:BACKEND")
EVAL_BACKENDS.register("llama_cpp", "jsquad_lora.evaluate.llama_cpp:BACKEND")
EVAL_BACKENDS.register("openai", "jsquad_lora.evaluate.openai_chat:BACKEND")
