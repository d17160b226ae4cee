"""Decoding modes (registered in `registry.DECODING_MODES`) and the settings of one generation call.

Adding a mode is one `register_decoding` call in this file: its name, what it does, the evaluation
backends that implement it, and the logits processor it adds to greedy decoding. `eval.decoding`,
the CLI's `--decoding` choices and the vLLM backend's check all read `DECODING_MODES`. Nothing here
imports torch, so the config and the CLI can read it at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from jsquad_lora.config.schema import RunConfig
from jsquad_lora.prompts.templates import NL
from jsquad_lora.registry import DECODING_MODES


@dataclass(frozen=True)
class DecodingMode:
    name: str
    help: str
    #: the batch's logits processor, built as processor(tokenizer, passages, prompt_length, end_ids, eos_id,
    #: stop_strings), with allow_empty=True added where abstaining is allowed (an end token may then come
    #: first); None: plain greedy. A processor with `candidates()` lets the output layer compute
    #: only those tokens (`extractive.head_restricted_to`).
    processor: Callable[..., Any] | None = None
    #: evaluation backends that implement the mode ("hf", "vllm")
    backends: tuple[str, ...] = ("hf",)
    #: the processor needs the passage of every prompt
    needs_passages: bool = False
    #: an answer cut by max_new_tokens may end inside a character: drop that partial character
    trims_partial_character: bool = False
    #: after greedy decoding, rescore(model, tokenizer, prompt_ids, passages, answers, config, end_ids) -> answers:
    #: a mode that reranks (span: the spans around the greedy answer); None: the greedy answers as they are
    rescore: Callable[..., Any] | None = None


def register_decoding(mode: DecodingMode) -> DecodingMode:
    return DECODING_MODES.register(mode.name, mode)


def decoding_mode(name: str) -> DecodingMode:
    return DECODING_MODES.get_entry(name)


def _extractive_processor(*args: Any, **kwargs: Any) -> Any:
    from jsquad_lora.generate.extractive import ExtractiveLogitsProcessor

    return ExtractiveLogitsProcessor(*args, **kwargs)


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


def _span_rescore(*args: Any, **kwargs: Any) -> Any:
    from jsquad_lora.generate.span_scoring import rescore_spans

    return rescore_spans(*args, **kwargs)


register_decoding(
    DecodingMode(
        "span",
        "extractive, then the passage spans around its answer (ends moved to nearby word boundaries) ranked by "
        "log-probability, end of the answer included (fixes answers of the wrong length)",
        processor=_extractive_processor,
        needs_passages=True,
        trims_partial_character=True,
        rescore=_span_rescore,
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
    #: an empty answer (an end token first) is allowed in every mode: the model may say the passage has no answer
    abstain: bool = False
    #: with `abstain`: abstain only where the first step's end-token logit beats the best other by more than this
    abstain_threshold: float = 0.0

    def __post_init__(self) -> None:
        decoding_mode(self.mode)
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be at least 1")


@dataclass(frozen=True)
class ScoredAnswer:
    """An answer and how sure the model was of it (`generate_scored`).

    `score`: the log-probability of the generated tokens up to and including the one that ended the answer,
    under the decoding mode's distribution (log-softmax of the logits after the mode's processor: in
    extractive decoding, over the tokens that keep the answer a passage span). An abstention (an end token
    first) scores that token's log-probability. None: not scored (plain generation: one window, no
    abstaining). `abstain_margin`: at the first step, the best end token's logit minus the best other
    token's (> 0: greedy abstains; the threshold is compared with it); None where the mode does not allow
    an empty answer."""

    text: str
    score: float | None
    abstain_margin: float | None = None


def best_window(answers: Sequence[ScoredAnswer]) -> int | None:
    """The window whose answer a question gets: of the windows that answer (a non-empty text), the one with
    the highest score (the first of equals); None where every window abstains."""
    spoken = [k for k, a in enumerate(answers) if a.text]
    return max(spoken, key=lambda k: (answers[k].score or 0.0, -k)) if spoken else None


def abstain_margin(answers: Sequence[ScoredAnswer]) -> float | None:
    """A question's abstention margin: the least of its windows' (it abstains only where every window does,
    i.e. where this margin exceeds the threshold); None where a window has none."""
    margins = [a.abstain_margin for a in answers]
    return None if not margins or None in margins else min(margins)  # type: ignore[type-var]


def decoding_config(cfg: RunConfig, mode: str | None = None) -> DecodingConfig:
    """The decoding settings of a run's evaluation (`eval.*`), in `mode` (default: `eval.decoding`)."""
    return DecodingConfig(
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        mode=mode or cfg.eval.decoding,
        share_prefix=cfg.eval.share_prefix,
        abstain=cfg.eval.abstain,
        abstain_threshold=cfg.eval.abstain_threshold,
    )
