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

Written here, on top of `generate`: the extractive logits processor (no library constrains a
row to substrings of its own passage), and a stop criterion on the decoded continuation rather
than transformers' `StopStringCriteria` (which matches token strings), so that the text that
stops a row is the very text the answer is cut from, for any tokenizer.
"""

from __future__ import annotations

import re
import weakref
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import torch
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .batching import prompt_ids

_KEY = 6  # a piece is indexed by its first (up to) 6 bytes: two kana/kanji in UTF-8
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
        size, special, alphabet = len(tokenizer), set(tokenizer.all_special_ids), _gpt2_byte_alphabet()
        anchor = next(i for i in range(size) if i not in special and _is_plain(tokenizer.decode([i])))
        head = tokenizer.decode([anchor], clean_up_tokenization_spaces=False)
        texts = tokenizer.batch_decode([[anchor, i] for i in range(size)], clean_up_tokenization_spaces=False)
        self.texts = [t[len(head):] if t.startswith(head) else None for t in texts]
        self.pieces = [None if i in special else _piece(text, token, alphabet)
                       for i, (text, token) in enumerate(zip(self.texts, tokenizer.convert_ids_to_tokens(list(range(size)))))]
        # piece[:_KEY] → [(id, piece)], and the same with leading whitespace stripped
        self.by_start: dict[bytes, list[tuple[int, bytes]]] = defaultdict(list)
        self.by_stripped_start: dict[bytes, list[tuple[int, bytes]]] = defaultdict(list)
        for i, piece in enumerate(self.pieces):
            if piece:
                self.by_start[piece[:_KEY]].append((i, piece))
                self.by_stripped_start[piece.lstrip()[:_KEY]].append((i, piece.lstrip()))
        self._openers: dict[bytes, frozenset[int]] = {}  # passage → first_pieces (passages repeat ~4×)
        self._containing: dict[tuple[str, ...], frozenset[int]] = {}

    def first_pieces(self, passage: bytes) -> frozenset[int]:
        """Tokens that can open an answer: their text, leading whitespace stripped, occurs in `passage`
        (pure-whitespace tokens included). O(len(passage)) dictionary lookups, not O(vocab)."""
        if passage not in self._openers:
            if len(self._openers) > 4096:
                self._openers.clear()
            keys = {passage[i:i + k] for k in range(1, _KEY + 1) for i in range(len(passage) - k + 1)} | {b""}
            self._openers[passage] = frozenset(i for key in keys for i, stripped in self.by_stripped_start.get(key, ())
                                               if len(stripped) <= _KEY or stripped in passage)
        return self._openers[passage]

    def next_pieces(self, passage: bytes, answer: bytes) -> set[int]:
        """Tokens whose text extends `answer` to a longer substring of `passage`."""
        found, start = set(), passage.find(answer)
        while start >= 0:
            end = start + len(answer)
            for k in range(1, min(_KEY, len(passage) - end) + 1):
                found.update(i for i, piece in self.by_start.get(passage[end:end + k], ()) if passage.startswith(piece, end))
            start = passage.find(answer, start + 1)
        return found

    def exactly(self, strings: Sequence[str]) -> set[int]:
        """Tokens whose text is exactly one of `strings` (rinna's `<NL>`), special tokens included."""
        return {i for i, text in enumerate(self.texts) if text and text in strings}

    def containing(self, strings: tuple[str, ...]) -> frozenset[int]:
        """Tokens whose text contains one of `strings`."""
        if strings not in self._containing:
            needles = [s.encode() for s in strings if s]
            self._containing[strings] = frozenset(i for i, piece in enumerate(self.pieces)
                                                  if piece and any(n in piece for n in needles))
        return self._containing[strings]


def _is_plain(text: str) -> bool:
    return bool(text) and "\ufffd" not in text and not any(c.isspace() for c in text)


def _piece(text: str | None, token: str | None, alphabet: dict[str, int]) -> bytes | None:
    """A token's bytes: its decoded text, or, for part of a character (decoded as U+FFFD), its raw byte(s)."""
    if text is None or not token:
        return None
    if "\ufffd" not in text:
        return text.encode()
    if match := _BYTE_TOKEN.fullmatch(token):
        return bytes([int(match[1], 16)])
    return bytes(alphabet[c] for c in token) if all(c in alphabet for c in token) else None


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
        self.banned = self.end_ids | self.vocab.containing(tuple(stop_strings))
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


def _special_ids(model, tokenizer) -> tuple[list[int], int]:
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
    eos_ids, _ = _special_ids(model, tokenizer)
    stop_ids = _vocab(tokenizer).exactly(stop_strings) if stop_strings else set()
    return eos_ids, stop_ids, set(eos_ids) | stop_ids


def _answer(tokenizer, ids: list[int], end_ids: set[int], stop_strings: Sequence[str], extractive: bool) -> str:
    """The decoded continuation cut at the first end token / stop string, whitespace-stripped."""
    cut = next((k for k, i in enumerate(ids) if i in end_ids), len(ids))
    text = _decode(tokenizer, ids[:cut])
    for stop in stop_strings:
        if stop and stop in text:
            text = text[:text.index(stop)]
    return (text.rstrip("\ufffd") if extractive else text).strip()  # extractive: drop a character cut by max_new_tokens


@contextmanager
def _inference(model) -> Iterator[torch.device]:
    """Eval mode (dropout off) and no autograd for the block; the model's mode is restored after.
    Yields the device inputs go to (the embeddings', also under `device_map`)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model.get_input_embeddings().weight.device
    finally:
        model.train(was_training)


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
    _, pad_id = _special_ids(model, tokenizer)
    eos_ids, stop_ids, end_ids = end_token_ids(model, tokenizer, config.stop_strings)
    answers: list[str] = [""] * len(prompts)
    with _inference(model) as device, tqdm(total=len(prompts), unit="q", desc=f"generating ({config.mode})",
                                           disable=not progress) as bar:
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            width = len(encoded[batch[0]])  # the longest: all rows are left-padded to it
            pads = [width - len(encoded[i]) for i in batch]
            input_ids = torch.tensor([[pad_id] * n + encoded[i] for n, i in zip(pads, batch)], device=device)
            attention_mask = torch.tensor([[0] * n + [1] * (width - n) for n in pads], device=device)
            processors = LogitsProcessorList()
            if extractive:
                processors.append(ExtractiveLogitsProcessor(tokenizer, [passages[i] for i in batch], width,  # type: ignore[index]
                                                            end_ids, eos_ids[0], config.stop_strings))
            criteria = StoppingCriteriaList([_StopOnText(tokenizer, width, config.stop_strings, stop_ids)])
            output = _greedy(model, input_ids, attention_mask, config.max_new_tokens, eos_ids, pad_id, processors, criteria)
            batch_answers = [_answer(tokenizer, ids, end_ids, config.stop_strings, extractive) for ids in output[:, width:].tolist()]
            for i, answer in zip(batch, batch_answers):
                answers[i] = answer
            if on_batch is not None:
                on_batch(list(batch), batch_answers)
            bar.update(len(batch))
    return answers


def generate_free(model, tokenizer, prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy continuation of `prompt` up to EOS (no stop strings), special tokens dropped, stripped."""
    ids = prompt_ids(tokenizer, prompt)
    eos_ids, pad_id = _special_ids(model, tokenizer)
    with _inference(model) as device:
        input_ids = torch.tensor([ids], device=device)
        output = _greedy(model, input_ids, torch.ones_like(input_ids), max_new_tokens, eos_ids, pad_id,
                         LogitsProcessorList(), StoppingCriteriaList())
    return _answer(tokenizer, output[0, len(ids):].tolist(), set(eos_ids), (), extractive=False)
