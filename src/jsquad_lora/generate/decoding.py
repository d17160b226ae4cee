"""Decoding modes (registered in `registry.DECODING_MODES`) and the settings of one generation call.

Adding a mode is one `register_decoding` call in this file: its name, what it does, the evaluation
backends that implement it, and the logits processor it adds to greedy decoding. `eval.decoding`,
the CLI's `--decoding` choices and the vLLM backend's check all read `DECODING_MODES`. Nothing here
imports torch, so the config and the CLI can read it at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from jsquad_lora.config.schema import RunConfig
from jsquad_lora.prompts.templates import NL
from jsquad_lora.registry import DECODING_MODES


@dataclass(frozen=True)
class DecodingMode:
    name: str
    help: str
    #: the batch's logits processor, built as processor(tokenizer, passages, prompt_length, end_ids, eos_id,
    #: stop_strings); None: plain greedy. A processor with `candidates()` lets the output layer compute
    #: only those tokens (`extractive.head_restricted_to`).
    processor: Callable[..., Any] | None = None
    #: evaluation backends that implement the mode ("hf", "vllm")
    backends: tuple[str, ...] = ("hf",)
    #: the processor needs the passage of every prompt
    needs_passages: bool = False
    #: an answer cut by max_new_tokens may end inside a character: drop that partial character
    trims_partial_character: bool = False


def register_decoding(mode: DecodingMode) -> DecodingMode:
    return DECODING_MODES.register(mode.name, mode)


def decoding_mode(name: str) -> DecodingMode:
    return DECODING_MODES.get_entry(name)


def _extractive_processor(*args: Any) -> Any:
    from jsquad_lora.generate.extractive import ExtractiveLogitsProcessor

    return ExtractiveLogitsProcessor(*args)


register_decoding(DecodingMode("greedy", "the most likely token at every step", backends=("hf", "vllm", "llama_cpp")))


register_decoding(
    DecodingMode(
        "extractive",
        "greedy over the spans of the question's passage only (the answer is always a passage substring)",
        processor=_extractive_processor,
        needs_passages=True,
        trims_partial_character=True,
    )
)


@dataclass(frozen=True)
class DecodingConfig:
    max_new_tokens: int = 48
    batch_size: int = 32
    mode: str = "greedy"  # a name in DECODING_MODES
    stop_strings: tuple[str, ...] = (NL, "\n")
    share_prefix: bool = True  # run a prompt prefix shared by several prompts once (same answers)
    candidate_head: bool = True  # the LM head computes only the tokens the mode can pick (same answers)
    screen_head: bool = True  # greedy's float32 LM head arg-max via a bfloat16 screen (same answers)

    def __post_init__(self) -> None:
        decoding_mode(self.mode)
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be at least 1")


def decoding_config(cfg: RunConfig, mode: str | None = None) -> DecodingConfig:
    """The decoding settings of a run's evaluation (`eval.*`), in `mode` (default: `eval.decoding`)."""
    return DecodingConfig(
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        mode=mode or cfg.eval.decoding,
        share_prefix=cfg.eval.share_prefix,
    )
