"""Answers by greedy generation: batched, one-at-a-time exact, in any registered decoding mode; free generation.

Batching: prompts are tokenised as training sees them (`tokenize.prompt_ids`), sorted longest
first, LEFT-padded by hand (the tokenizer's `padding_side` is never touched) with an attention
mask. `model.generate` (transformers 5) derives `position_ids = cumsum(attention_mask) - 1` when
the model's `forward` takes `position_ids` (GPT-NeoX does), so every real token sits at the
position it has when its prompt is generated alone; `tests/test_generation.py` checks both the
position ids and batched == one-at-a-time answers. Decoding is greedy (`do_sample=False`, one
beam, no repetition penalty) whatever the model's generation config says; a decoding mode
(`decoding.DECODING_MODES`) adds its logits processor. Shared prompt prefixes run once
(`prefix_cache`).

An answer is the generated text cut at the first EOS or stop string (`<NL>`, newline), decoded
without special tokens, with leading/trailing whitespace stripped (inner spaces kept).

Written here, on top of `generate`: a stop criterion on the decoded continuation rather than
transformers' `StopStringCriteria` (which matches token strings), so that the text that stops a
row is the very text the answer is cut from, for any tokenizer.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from jsquad_lora.encoding.tokens import prompt_ids
from jsquad_lora.generate.decoding import DecodingConfig, ScoredAnswer, decoding_mode
from jsquad_lora.generate.extractive import head_restricted_to
from jsquad_lora.generate.prefix_cache import batch_inputs, plan_batches
from jsquad_lora.generate.screened_head import screened_head
from jsquad_lora.generate.vocab import decode, token_vocab


class _StopOnText(StoppingCriteria):
    """A row is done when its decoded continuation contains a stop string, or ends in a stop token."""

    def __init__(self, tokenizer, prompt_length: int, stop_strings: Sequence[str], stop_ids: set[int]) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.stop_strings, self.stop_ids = [s for s in stop_strings if s], stop_ids

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length :].tolist()
        done = [
            bool(ids) and ids[-1] in self.stop_ids or any(s in decode(self.tokenizer, ids) for s in self.stop_strings)
            for ids in generated
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _LowerEnds(LogitsProcessor):
    """The first processor where an abstention threshold is set: the end tokens' logits at the first step are
    lowered by it, so greedy decoding abstains only where their margin over every other token exceeds it (the
    mode's processor then checks the token that wins instead)."""

    def __init__(self, prompt_length: int, end_ids: set[int], threshold: float) -> None:
        self.prompt_length, self.end_ids, self.threshold = prompt_length, sorted(end_ids), threshold

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] != self.prompt_length:
            return scores
        ends = [i for i in self.end_ids if i < scores.shape[1]]
        scores = scores.clone()
        scores[:, ends] = scores[:, ends] - self.threshold
        return scores


class _AnswerScores(LogitsProcessor):
    """The last processor of a scored generation: records, per step, the log-probability of the token greedy
    decoding takes (the arg-max of the scores it returns), and where abstaining is allowed, the first step's
    abstention margin (best end token minus best other, before any threshold lowered the end tokens)."""

    def __init__(
        self, prompt_length: int, end_ids: set[int], abstain: bool, threshold: float, only: list[int] | None
    ) -> None:
        self.prompt_length, self.end_ids = prompt_length, sorted(end_ids)
        self.abstain, self.threshold = abstain, threshold
        # the only tokens the mode's processor can leave finite (extractive: the passages' pieces and the end
        # tokens): the scores are read there alone, the same numbers at a fraction of a 262k vocabulary's cost
        self.only = None if only is None else torch.tensor(only)
        self.steps: list[torch.Tensor] = []
        self.margins: list[float | None] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        read = scores if self.only is None else scores[:, self.only.to(scores.device)]
        if input_ids.shape[1] == self.prompt_length and self.abstain:
            ends = torch.tensor([i for i in self.end_ids if i < scores.shape[1]], device=scores.device)
            best_end = scores[:, ends].amax(dim=-1)
            others = read.clone()
            if self.only is None:
                others[:, ends] = float("-inf")
            else:
                others[:, torch.isin(self.only.to(scores.device), ends)] = float("-inf")
            margin = (best_end - others.amax(dim=-1)).float().tolist()
            self.margins = [m + self.threshold if math.isfinite(m) else None for m in margin]
        chosen = read.amax(dim=-1).float() - torch.logsumexp(read.float(), dim=-1)
        self.steps.append(torch.nan_to_num(chosen, nan=float("-inf")))
        return scores

    def row(self, r: int, length: int) -> tuple[float, float | None]:
        """(score, abstention margin) of batch row `r`, whose answer took its first `length` generated tokens."""
        total = sum(float(step[r]) for step in self.steps[:length])
        # a token with no probability at all (only where a processor forced it): the lowest score JSON can hold
        return total if math.isfinite(total) else -1e300, self.margins[r] if self.margins else None


def answer_length(tokenizer, ids: list[int], end_ids: set[int], stop_strings: Sequence[str]) -> int:
    """How many generated tokens an answer took: up to and including its first end token, or the token that
    completed a stop string, else all of them (max_new_tokens ran out)."""
    end = next((k + 1 for k, i in enumerate(ids) if i in end_ids), len(ids))
    stops = [s for s in stop_strings if s]
    for k in range(1, end):
        if stops and any(s in decode(tokenizer, ids[:k]) for s in stops):
            return k
    return end


def special_ids(model, tokenizer) -> tuple[list[int], int]:
    """EOS ids (the tokenizer's and every one of the model's generation config: chat models have
    several) and the padding id (EOS when the tokenizer has no pad token)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    eos |= {tokenizer.eos_token_id} - {None}
    if not eos:
        raise ValueError("neither the tokenizer nor the model defines an EOS token")
    return sorted(eos), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)


def end_token_ids(model, tokenizer, stop_strings: Sequence[str]) -> tuple[list[int], set[int], set[int]]:
    """(EOS ids, single-token stop strings' ids, both together): the ids that end an answer."""
    eos_ids, _ = special_ids(model, tokenizer)
    stop_ids = token_vocab(tokenizer).exactly(stop_strings) if stop_strings else set()
    return eos_ids, stop_ids, set(eos_ids) | stop_ids


def cut_answer(
    tokenizer, ids: list[int], end_ids: set[int], stop_strings: Sequence[str], trim_partial_character: bool = False
) -> str:
    """The decoded continuation cut at the first end token / stop string, whitespace-stripped;
    `trim_partial_character`: without a character that max_new_tokens cut in the middle."""
    cut = next((k for k, i in enumerate(ids) if i in end_ids), len(ids))
    text = decode(tokenizer, ids[:cut])
    for stop in stop_strings:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return (text.rstrip("\ufffd") if trim_partial_character else text).strip()


@contextmanager
def inference_mode(model) -> Iterator[torch.device]:
    """Eval mode (dropout off) and no autograd for the block; the model's mode is restored after.
    Yields the device inputs go to (the embeddings', also under `device_map`)."""
    was_training = model.training
    model.eval()
    head = model.get_output_embeddings()
    # The head's input is a slice of the hidden states (the last position). CPU linear with a
    # non-contiguous 3-D input and a weight that does not require grad (a merged LoRA model)
    # takes a batched path that copies the weight per row: gigabytes for a 262k-token head.
    hook = (
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
        if head is not None
        else None
    )
    try:
        with torch.inference_mode():
            yield model.get_input_embeddings().weight.device
    finally:
        model.train(was_training)
        if hook is not None:
            hook.remove()


def _greedy(
    model,
    inputs: dict,
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    processors: LogitsProcessorList,
    criteria: StoppingCriteriaList,
) -> torch.Tensor:
    """`model.generate`, greedy whatever `model.generation_config` says; position ids come from the mask."""
    return model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
        logits_processor=processors,
        stopping_criteria=criteria,
    )


def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    passages: list[str] | None,
    config: DecodingConfig,
    progress: bool = False,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """One answer per prompt, in input order; each equals what generating that prompt alone gives.

    Prompts are batched longest first (least padding), a passage's questions together when
    `config.share_prefix`. `on_batch(indices, answers)` is called after each batch with the
    input indices it answered. `passages[i]` is the passage of `prompts[i]`; needed only by modes
    that read it (extractive).
    """
    report = None if on_batch is None else lambda batch, scored: on_batch(batch, [a.text for a in scored])
    return [a.text for a in _generate(model, tokenizer, prompts, passages, config, progress, report, scored=False)]


def generate_scored(
    model,
    tokenizer,
    prompts: list[str],
    passages: list[str] | None,
    config: DecodingConfig,
    progress: bool = False,
    on_batch: Callable[[list[int], list[ScoredAnswer]], None] | None = None,
) -> list[ScoredAnswer]:
    """`generate_answers` with each answer's score (`ScoredAnswer`): the same answers, except where
    `config.abstain_threshold` moves an abstention. The float32 output layer runs whole (no bfloat16 screen:
    a score reads every logit)."""
    return _generate(model, tokenizer, prompts, passages, config, progress, on_batch, scored=True)


def _generate(
    model,
    tokenizer,
    prompts: list[str],
    passages: list[str] | None,
    config: DecodingConfig,
    progress: bool,
    on_batch: Callable[[list[int], list[ScoredAnswer]], None] | None,
    *,
    scored: bool,
) -> list[ScoredAnswer]:
    mode = decoding_mode(config.mode)
    if mode.needs_passages and (passages is None or len(passages) != len(prompts)):
        raise ValueError(f"{mode.name} decoding needs one passage per prompt")
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    _, pad_id = special_ids(model, tokenizer)
    eos_ids, stop_ids, end_ids = end_token_ids(model, tokenizer, config.stop_strings)
    answers: list[ScoredAnswer] = [ScoredAnswer("", 0.0)] * len(prompts)
    with (
        inference_mode(model) as device,
        tqdm(total=len(prompts), unit="q", desc=f"generating ({config.mode})", disable=not progress) as bar,
    ):
        for planned in plan_batches(encoded, config.batch_size, config.share_prefix):
            batch = [i for i, _ in planned]
            inputs = batch_inputs(model, encoded, planned, pad_id, device, room=config.max_new_tokens)
            width = inputs["input_ids"].shape[1]  # every row's prompt ends here
            processors = LogitsProcessorList()
            if config.abstain and config.abstain_threshold:
                processors.append(_LowerEnds(width, end_ids, config.abstain_threshold))
            candidates = None
            if mode.processor is not None:
                rows = [passages[i] for i in batch] if passages is not None else None
                # allow_empty only where abstaining: a mode registered before abstention still builds as it did
                extra = {"allow_empty": True} if config.abstain else {}
                processor = mode.processor(tokenizer, rows, width, end_ids, eos_ids[0], config.stop_strings, **extra)
                processors.append(processor)
                if config.candidate_head and hasattr(processor, "candidates"):
                    candidates = processor.candidates()
            only = processor.candidates() if mode.processor is not None and hasattr(processor, "candidates") else None
            recorder = _AnswerScores(width, end_ids, config.abstain, config.abstain_threshold, only) if scored else None
            if recorder is not None:
                processors.append(recorder)
            criteria = StoppingCriteriaList([_StopOnText(tokenizer, width, config.stop_strings, stop_ids)])
            with head_restricted_to(model, candidates), screened_head(model, config.screen_head and not processors):
                output = _greedy(model, inputs, config.max_new_tokens, eos_ids, pad_id, processors, criteria)
            batch_answers = []
            for r, ids in enumerate(output[:, width:].tolist()):
                text = cut_answer(tokenizer, ids, end_ids, config.stop_strings, mode.trims_partial_character)
                score, margin = (
                    recorder.row(r, answer_length(tokenizer, ids, end_ids, config.stop_strings))
                    if recorder is not None
                    else (None, None)
                )
                batch_answers.append(ScoredAnswer(text, score, margin))
            if mode.rescore is not None:
                rows = [passages[i] for i in batch] if passages is not None else [""] * len(batch)
                prompts_ids = [encoded[i] for i in batch]
                batch_answers = mode.rescore(model, tokenizer, prompts_ids, rows, batch_answers, config, end_ids)
            for i, answer in zip(batch, batch_answers):
                answers[i] = answer
            if on_batch is not None:
                on_batch(list(batch), batch_answers)
            bar.update(len(batch))
    return answers


def generate_free(model, tokenizer, prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy continuation of `prompt` up to EOS (no stop strings), special tokens dropped, stripped."""
    ids = prompt_ids(tokenizer, prompt)
    eos_ids, pad_id = special_ids(model, tokenizer)
    with inference_mode(model) as device:
        input_ids = torch.tensor([ids], device=device)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        output = _greedy(model, inputs, max_new_tokens, eos_ids, pad_id, LogitsProcessorList(), StoppingCriteriaList())
    return cut_answer(tokenizer, output[0, len(ids) :].tolist(), set(eos_ids), ())
