"""Answers by greedy generation: batched, one-at-a-time exact, optionally extractive; free generation.

Batching: prompts are tokenised as training sees them (`batching.prompt_ids`), sorted longest
first, LEFT-padded by hand (the tokenizer's `padding_side` is never touched) with an attention
mask. `model.generate` (transformers 5) derives `position_ids = cumsum(attention_mask) - 1` when
the model's `forward` takes `position_ids` (GPT-NeoX does), so every real token sits at the
position it has when its prompt is generated alone; `tests/test_generation.py` checks both the
position ids and batched == one-at-a-time answers. Decoding is greedy (`do_sample=False`, one
beam, no repetition penalty) whatever the model's generation config says.

An answer is the generated text cut at the first EOS or stop string (`<NL>`, newline), decoded
without special tokens, with leading/trailing whitespace stripped (inner spaces kept).
"""

from __future__ import annotations

import re
import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .batching import prompt_ids

_KEY = 3  # a piece is indexed by its first (up to) 3 bytes: one kana/kanji in UTF-8
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece byte fallback


@dataclass(frozen=True)
class DecodingConfig:
    max_new_tokens: int = 48
    batch_size: int = 32
    mode: Literal["greedy", "extractive"] = "greedy"
    stop_strings: tuple[str, ...] = ("<NL>", "\n")

    def __post_init__(self) -> None:
        if self.mode not in ("greedy", "extractive"):
            raise ValueError(f"decoding mode must be greedy or extractive, not {self.mode!r}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be at least 1")


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _gpt2_byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's `bytes_to_unicode`), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


class _Vocab:
    """Every token's text in mid-sequence context, as UTF-8 bytes, indexed by its first bytes.

    A token's text is `decode([anchor, id])` minus `decode([anchor])`, so sentencepiece's `▁`
    becomes the space it is inside a text. Tokens holding part of a character (byte-level BPE,
    byte fallback) get their raw bytes. Special and undecodable tokens have no piece (None).
    """

    def __init__(self, tokenizer) -> None:
        size, special = len(tokenizer), set(tokenizer.all_special_ids)
        anchor = next(i for i in range(size) if i not in special and _is_plain(tokenizer.decode([i])))
        head = tokenizer.decode([anchor], clean_up_tokenization_spaces=False)
        texts = tokenizer.batch_decode([[anchor, i] for i in range(size)], clean_up_tokenization_spaces=False)
        self.texts = [t[len(head):] if t.startswith(head) else None for t in texts]
        raw, alphabet = tokenizer.convert_ids_to_tokens(list(range(size))), _gpt2_byte_alphabet()
        self.pieces: list[bytes | None] = []
        for i, (text, token) in enumerate(zip(self.texts, raw)):
            piece = None
            if i in special or text is None or not token:
                pass
            elif "\ufffd" not in text:
                piece = text.encode()
            elif match := _BYTE_TOKEN.fullmatch(token):
                piece = bytes([int(match[1], 16)])
            elif all(c in alphabet for c in token):
                piece = bytes(alphabet[c] for c in token)
            self.pieces.append(piece)
        self.by_start: dict[bytes, list[int]] = defaultdict(list)  # piece[:_KEY] → ids
        self.by_stripped_start: dict[bytes, list[int]] = defaultdict(list)  # piece.lstrip()[:_KEY] → ids
        for i, piece in enumerate(self.pieces):
            if piece:
                self.by_start[piece[:_KEY]].append(i)
                self.by_stripped_start[piece.lstrip()[:_KEY]].append(i)

    def first_pieces(self, passage: bytes) -> set[int]:
        """Tokens that can open an answer: their text, leading whitespace stripped, occurs in `passage`
        (pure-whitespace tokens included). O(len(passage)) lookups, not O(vocab)."""
        keys = {passage[i:i + k] for k in range(1, _KEY + 1) for i in range(len(passage) - k + 1)} | {b""}
        return {i for key in keys for i in self.by_stripped_start.get(key, ())
                if len(stripped := self.pieces[i].lstrip()) <= _KEY or stripped in passage}

    def next_pieces(self, passage: bytes, answer: bytes) -> set[int]:
        """Tokens whose text extends `answer` to a longer substring of `passage`."""
        found, start = set(), passage.find(answer)
        while start >= 0:
            end = start + len(answer)
            for k in range(1, min(_KEY, len(passage) - end) + 1):
                found.update(i for i in self.by_start.get(passage[end:end + k], ()) if passage.startswith(self.pieces[i], end))
            start = passage.find(answer, start + 1)
        return found


def _is_plain(text: str) -> bool:
    return bool(text) and "\ufffd" not in text and not any(c.isspace() for c in text)


_VOCABS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer → (len(tokenizer), _Vocab)


def _vocab(tokenizer) -> _Vocab:
    cached = _VOCABS.get(tokenizer)
    if cached is None or cached[0] != len(tokenizer):
        cached = (len(tokenizer), _Vocab(tokenizer))
        _VOCABS[tokenizer] = cached
    return cached[1]


def _complete_text(answer: bytes) -> bool:
    """At least one visible character, and no character cut in the middle."""
    try:
        return bool(answer.decode().strip())
    except UnicodeDecodeError:
        return False


class ExtractiveLogitsProcessor(LogitsProcessor):
    """Greedy decoding restricted to spans of each row's passage.

    Policy, per row: the answer text (the generated tokens' texts joined, leading whitespace
    stripped) must stay a substring of the passage after every token; the first token may carry
    leading whitespace (`▁答`, ` 答` after `システム: `), later tokens' whitespace must be in the
    passage. EOS, and any stop string that is a single token, are allowed once the answer has at
    least one complete visible character; tokens containing a stop string are never allowed
    otherwise. If no token is allowed, EOS is forced.

    Candidates come from a per-tokenizer byte index (`_Vocab`), so partial-character tokens work.
    The chosen (arg-max) token is then checked on real decoded text: `decode(generated + [token])`,
    stripped, must be in the passage (a trailing half character aside), else the next best
    allowed token is tried, so the answer is exactly a span whatever the tokenizer's decoder does.
    """

    def __init__(self, tokenizer, passages: Sequence[str], prompt_length: int, end_ids: set[int],
                 eos_id: int, stop_strings: Sequence[str]) -> None:
        self.tokenizer, self.vocab = tokenizer, _vocab(tokenizer)
        self.passages, self.prompt_length = list(passages), prompt_length
        self.end_ids, self.eos_id = frozenset(end_ids), eos_id
        self.passage_bytes = [p.encode() for p in self.passages]
        self.banned = self.end_ids | {i for i, piece in enumerate(self.vocab.pieces)
                                      if piece and any(s.encode() in piece for s in stop_strings if s)}
        self.openers = [sorted(self.vocab.first_pieces(p) - self.banned) for p in self.passage_bytes]

    def _allowed(self, row: int, generated: list[int]) -> list[int] | None:
        """Allowed next tokens; None for a finished row (after EOS / stop token / padding)."""
        pieces = [self.vocab.pieces[i] if i < len(self.vocab.pieces) else None for i in generated]
        if any(p is None or i in self.end_ids for i, p in zip(generated, pieces)):
            return None
        answer = b"".join(pieces).lstrip()  # type: ignore[arg-type]
        if not answer:
            return self.openers[row]
        allowed = sorted(self.vocab.next_pieces(self.passage_bytes[row], answer) - self.banned)
        return allowed + sorted(self.end_ids) if _complete_text(answer) else allowed

    def _text_ok(self, row: int, ids: list[int]) -> bool:
        return _decode(self.tokenizer, ids).lstrip().rstrip("\ufffd") in self.passages[row]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids[:, self.prompt_length:].tolist()
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        active = []
        for r, generated in enumerate(rows):
            allowed = self._allowed(r, generated)
            if allowed is None:
                mask[r] = True  # finished: generate pads this row anyway
                continue
            allowed = [i for i in allowed if i < scores.shape[1]] or [self.eos_id]
            mask[r, allowed] = True
            active.append(r)
        scores = scores.masked_fill(~mask.to(scores.device), float("-inf"))
        best = scores.argmax(-1).tolist()
        for r in active:  # exact check of the token greedy decoding will pick
            choice = best[r]
            while choice not in self.end_ids and not self._text_ok(r, rows[r] + [choice]):
                scores[r, choice] = float("-inf")
                if bool(torch.isneginf(scores[r]).all()):
                    scores[r, self.eos_id] = 0.0
                    break
                choice = int(scores[r].argmax())
        return scores


class _StopOnText(StoppingCriteria):
    """A row is done when its decoded continuation contains a stop string, or ends in a stop token."""

    def __init__(self, tokenizer, prompt_length: int, stop_strings: Sequence[str], stop_ids: set[int]) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.stop_strings, self.stop_ids = [s for s in stop_strings if s], stop_ids

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length:].tolist()
        done = [bool(ids) and ids[-1] in self.stop_ids or any(s in _decode(self.tokenizer, ids) for s in self.stop_strings)
                for ids in generated]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and every EOS of the model's generation config (chat models have several)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an EOS token")
    return sorted(ids)


def _stop_ids(tokenizer, stop_strings: Sequence[str]) -> set[int]:
    """Tokens whose text is exactly a stop string (rinna's `<NL>`), special or not."""
    texts = _vocab(tokenizer).texts
    return {i for i, text in enumerate(texts) if text and text in stop_strings}


def _answer(tokenizer, ids: list[int], end_ids: set[int], stop_strings: Sequence[str], extractive: bool) -> str:
    """The decoded continuation cut at the first end token / stop string, whitespace-stripped."""
    cut = next((k for k, i in enumerate(ids) if i in end_ids), len(ids))
    text = _decode(tokenizer, ids[:cut])
    for stop in stop_strings:
        if stop and stop in text:
            text = text[:text.index(stop)]
    return (text.rstrip("\ufffd") if extractive else text).strip()  # extractive: drop a character cut by max_new_tokens


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def _greedy(model, input_ids, attention_mask, max_new_tokens: int, eos_ids: list[int], pad_id: int,
            processors: LogitsProcessorList, criteria: StoppingCriteriaList) -> torch.Tensor:
    """`model.generate`, greedy whatever `model.generation_config` says; position ids come from the mask."""
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                          do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
                          eos_token_id=eos_ids, pad_token_id=pad_id, use_cache=True,
                          logits_processor=processors, stopping_criteria=criteria)


def generate_answers(model, tokenizer, prompts: list[str], passages: list[str] | None, config: DecodingConfig,
                     progress: bool = False, on_batch: Callable[[list[int], list[str]], None] | None = None) -> list[str]:
    """One answer per prompt, in input order; each equals what generating that prompt alone gives.

    Prompts are batched longest first (least padding). `on_batch(indices, answers)` is called
    after each batch with the input indices it answered. `passages[i]` is the passage of
    `prompts[i]`; needed only in extractive mode.
    """
    extractive = config.mode == "extractive"
    if extractive and (passages is None or len(passages) != len(prompts)):
        raise ValueError("extractive decoding needs one passage per prompt")
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    stop_ids = _stop_ids(tokenizer, config.stop_strings) if config.stop_strings else set()
    end_ids = set(eos_ids) | stop_ids
    device = _input_device(model)
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), unit="q", desc=f"generating ({config.mode})", disable=not progress)
    try:
        with torch.inference_mode():
            for start in range(0, len(order), config.batch_size):
                batch = order[start:start + config.batch_size]
                width = len(encoded[batch[0]])
                input_ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
                attention_mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch],
                                              device=device)
                processors = LogitsProcessorList()
                if extractive:
                    processors.append(ExtractiveLogitsProcessor(tokenizer, [passages[i] for i in batch], width,  # type: ignore[index]
                                                                end_ids, eos_ids[0], config.stop_strings))
                criteria = StoppingCriteriaList([_StopOnText(tokenizer, width, config.stop_strings, stop_ids)])
                output = _greedy(model, input_ids, attention_mask, config.max_new_tokens, eos_ids, pad_id, processors, criteria)
                batch_answers = [_answer(tokenizer, ids, end_ids, config.stop_strings, extractive)
                                 for ids in output[:, width:].tolist()]
                for i, answer in zip(batch, batch_answers):
                    answers[i] = answer
                if on_batch is not None:
                    on_batch(list(batch), batch_answers)
                bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return answers


def generate_free(model, tokenizer, prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy continuation of `prompt` up to EOS (no stop strings), special tokens dropped, stripped."""
    ids = prompt_ids(tokenizer, prompt)
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = _input_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            input_ids = torch.tensor([ids], device=device)
            output = _greedy(model, input_ids, torch.ones_like(input_ids), max_new_tokens, eos_ids, pad_id,
                             LogitsProcessorList(), StoppingCriteriaList())
    finally:
        model.train(was_training)
    return _answer(tokenizer, output[0, len(ids):].tolist(), set(eos_ids), (), extractive=False)
