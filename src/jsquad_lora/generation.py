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

Prompts that share most of their tokens (the questions of one passage) are batched together and
their common prefix is run once: its KV cache is copied to each of their rows, each row is
[padding, prefix, padding, rest of the prompt] with the mask zero on padding, and `generate`
continues from the cache (`DecodingConfig.share_prefix`; the same answers, tested). Prompt
prefill is compute-bound and half of the batched time on CPU; JSQuAD has ~4 questions per passage.

Written here, on top of `generate`: the extractive logits processor (no library constrains a
row to substrings of its own passage), and a stop criterion on the decoded continuation rather
than transformers' `StopStringCriteria` (which matches token strings), so that the text that
stops a row is the very text the answer is cut from, for any tokenizer.
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
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
    share_prefix: bool = True  # run a prompt prefix shared by several prompts once (same answers)
    candidate_head: bool = True  # extractive: the LM head computes only the batch's passage tokens (same answers)

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
        self.texts = [t[len(head) :] if t.startswith(head) else None for t in texts]
        self.pieces = [
            None if i in special else _piece(text, token, alphabet)
            for i, (text, token) in enumerate(zip(self.texts, tokenizer.convert_ids_to_tokens(list(range(size)))))
        ]
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
            keys = {passage[i : i + k] for k in range(1, _KEY + 1) for i in range(len(passage) - k + 1)} | {b""}
            self._openers[passage] = frozenset(
                i
                for key in keys
                for i, stripped in self.by_stripped_start.get(key, ())
                if len(stripped) <= _KEY or stripped in passage
            )
        return self._openers[passage]

    def next_pieces(self, passage: bytes, answer: bytes) -> set[int]:
        """Tokens whose text extends `answer` to a longer substring of `passage`."""
        found, start = set(), passage.find(answer)
        while start >= 0:
            end = start + len(answer)
            for k in range(1, min(_KEY, len(passage) - end) + 1):
                found.update(
                    i for i, piece in self.by_start.get(passage[end : end + k], ()) if passage.startswith(piece, end)
                )
            start = passage.find(answer, start + 1)
        return found

    def exactly(self, strings: Sequence[str]) -> set[int]:
        """Tokens whose text is exactly one of `strings` (rinna's `<NL>`), special tokens included."""
        return {i for i, text in enumerate(self.texts) if text and text in strings}

    def containing(self, strings: tuple[str, ...]) -> frozenset[int]:
        """Tokens whose text contains one of `strings`."""
        if strings not in self._containing:
            needles = [s.encode() for s in strings if s]
            self._containing[strings] = frozenset(
                i for i, piece in enumerate(self.pieces) if piece and any(n in piece for n in needles)
            )
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

    def __init__(
        self,
        tokenizer,
        passages: Sequence[str],
        prompt_length: int,
        end_ids: set[int],
        eos_id: int,
        stop_strings: Sequence[str],
    ) -> None:
        self.tokenizer, self.vocab = tokenizer, _vocab(tokenizer)
        self.passages, self.prompt_length = list(passages), prompt_length
        self.end_ids, self.eos_id = frozenset(end_ids), eos_id
        self.passage_bytes = [p.encode() for p in self.passages]
        self.banned = self.end_ids | self.vocab.containing(tuple(stop_strings))
        self.openers = [sorted(self.vocab.first_pieces(p) - self.banned) for p in self.passage_bytes]

    def candidates(self) -> list[int]:
        """Every token any row may ever choose (its passage's pieces, the end tokens, EOS): the only
        logits this processor can leave finite, so the LM head need compute no others."""
        ids = set(self.end_ids) | {self.eos_id}
        for row in self.openers:
            ids.update(row)
        return sorted(ids)

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
        rows = input_ids[:, self.prompt_length :].tolist()
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
        generated = input_ids[:, self.prompt_length :].tolist()
        done = [
            bool(ids) and ids[-1] in self.stop_ids or any(s in _decode(self.tokenizer, ids) for s in self.stop_strings)
            for ids in generated
        ]
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
            text = text[: text.index(stop)]
    return (text.rstrip("\ufffd") if extractive else text).strip()  # extractive: drop a character cut by max_new_tokens


@contextmanager
def _inference(model) -> Iterator[torch.device]:
    """Eval mode (dropout off) and no autograd for the block; the model's mode is restored after.
    Yields the device inputs go to (the embeddings', also under `device_map`)."""
    was_training = model.training
    model.eval()
    head = model.get_output_embeddings()
    # The head's input is a slice of the hidden states (the last position). CPU linear with a
    # non-contiguous 3-D input and a weight that does not require grad (a merged LoRA model)
    # takes a batched path that copies the weight per row: 8 GB and 8 s for Gemma's head.
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


class _CandidateHead(torch.nn.Module):
    """An output layer that computes the logits of `ids` only; every other logit is -inf.

    In extractive decoding a row can only ever pick a token of its passage (a few thousand of
    Gemma's 262k): the full head costs more than the whole body of a 270M model per token."""

    def __init__(self, head: torch.nn.Module, ids: list[int]) -> None:
        super().__init__()
        self.vocab = head.weight.shape[0]
        self.ids = torch.tensor(ids, device=head.weight.device)
        self.weight = head.weight[self.ids]
        self.bias = None if getattr(head, "bias", None) is None else head.bias[self.ids]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(hidden.contiguous(), self.weight, self.bias)  # see _inference
        out = logits.new_full((*logits.shape[:-1], self.vocab), float("-inf"))
        return out.index_copy_(-1, self.ids, logits)


@contextmanager
def _head_restricted_to(model, ids: list[int] | None) -> Iterator[None]:
    """The model's output layer computes only `ids` inside the block (no change when None, or
    where the output layer is not a plain linear layer)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if ids is not None else None
    if type(head) is not torch.nn.Linear:
        yield
        return
    base.set_output_embeddings(_CandidateHead(head, ids))
    try:
        yield
    finally:
        base.set_output_embeddings(head)


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


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def _plan_batches(encoded: list[list[int]], batch_size: int, share_prefix: bool) -> list[list[tuple[int, int]]]:
    """Batches of (prompt index, length of the prefix computed once for its group), longest first.

    Sharing on: prompts sharing at least half of the longer one's tokens form a group (found
    next to each other in lexicographic order) whose common prefix, at most all but the last
    token of its shortest prompt, is run once; groups are kept whole within a batch where they
    fit. Off: every prefix length is 0 and the batches are plain longest-first chunks."""
    if not share_prefix or min(map(len, encoded), default=2) < 2:
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        return [[(i, 0) for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
    groups: list[tuple[list[int], int]] = []
    for i in sorted(range(len(encoded)), key=lambda i: encoded[i]):
        if groups:
            members, shared = groups[-1]
            first = encoded[members[0]]
            common = _common_length(first, encoded[i])
            if 2 * common >= max(len(first), len(encoded[i])) and len(members) < batch_size:
                groups[-1] = (members + [i], min(shared, common, len(encoded[i]) - 1))
                continue
        groups.append(([i], len(encoded[i]) - 1))
    groups.sort(key=lambda g: -max(len(encoded[i]) for i in g[0]))
    batches: list[list[tuple[int, int]]] = [[]]
    for members, shared in groups:
        if len(batches[-1]) + len(members) > batch_size:
            batches.append([])
        batches[-1] += sorted(((i, shared) for i in members), key=lambda row: -len(encoded[row[0]]))
    return [b for b in batches if b]


@lru_cache(maxsize=1)
def _cache_argument() -> str:
    """The keyword `forward`/`generate` take a KV cache under: `cache` in recent transformers 5,
    `past_key_values` before."""
    from transformers import GenerationMixin

    return (
        "cache"
        if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
        else "past_key_values"
    )


@lru_cache(maxsize=8)
def _keeps_last_logits_only(model_class: type) -> bool:
    """Whether the model's `forward` takes `logits_to_keep` (the prefix pass then skips the LM head)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(map(len, rows))
    return [[pad_id] * (width - len(r)) + r for r in rows], [[0] * (width - len(r)) + [1] * len(r) for r in rows]


def _batch_inputs(model, encoded: list[list[int]], batch: list[tuple[int, int]], pad_id: int, device) -> dict:
    """input_ids, attention_mask and (when prefixes are shared) the prefilled cache for one batch."""
    prefixes = [tuple(encoded[i][:n]) for i, n in batch]
    shared: dict[tuple[int, ...], int] = {}  # prefix run once → its row in the prefill batch
    for prefix in prefixes:
        if prefix:
            shared.setdefault(prefix, len(shared))
    if not shared:
        ids, mask = _left_pad([encoded[i] for i, _ in batch], pad_id)
        return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}
    prefix_ids, prefix_mask = _left_pad([list(p) for p in shared], pad_id)
    rest_ids, rest_mask = _left_pad([encoded[i][n:] for i, n in batch], pad_id)
    mask = torch.tensor(prefix_mask, device=device)
    key = _cache_argument()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model forwards **kwargs
    extra = {"logits_to_keep": 1} if _keeps_last_logits_only(type(base)) else {}
    out = model(
        input_ids=torch.tensor(prefix_ids, device=device),
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        **extra,
    )
    cache = getattr(out, key, None)
    cache = out.past_key_values if cache is None else cache
    rows = [shared[prefix] for prefix in prefixes]
    cache.reorder_cache(torch.tensor(rows, device=device))  # one copy of its prefix's cache per row
    ids = [prefix_ids[g] + r for g, r in zip(rows, rest_ids)]
    full_mask = [prefix_mask[g] + m for g, m in zip(rows, rest_mask)]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(full_mask, device=device),
        key: cache,
    }


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
    input indices it answered. `passages[i]` is the passage of `prompts[i]`; needed only in
    extractive mode.
    """
    extractive = config.mode == "extractive"
    if extractive and (passages is None or len(passages) != len(prompts)):
        raise ValueError("extractive decoding needs one passage per prompt")
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    _, pad_id = _special_ids(model, tokenizer)
    eos_ids, stop_ids, end_ids = end_token_ids(model, tokenizer, config.stop_strings)
    answers: list[str] = [""] * len(prompts)
    with (
        _inference(model) as device,
        tqdm(total=len(prompts), unit="q", desc=f"generating ({config.mode})", disable=not progress) as bar,
    ):
        for planned in _plan_batches(encoded, config.batch_size, config.share_prefix):
            batch = [i for i, _ in planned]
            inputs = _batch_inputs(model, encoded, planned, pad_id, device)
            width = inputs["input_ids"].shape[1]  # every row's prompt ends here
            processors = LogitsProcessorList()
            candidates = None
            if extractive:
                extract = ExtractiveLogitsProcessor(
                    tokenizer,
                    [passages[i] for i in batch],
                    width,  # type: ignore[index]
                    end_ids,
                    eos_ids[0],
                    config.stop_strings,
                )
                processors.append(extract)
                candidates = extract.candidates() if config.candidate_head else None
            criteria = StoppingCriteriaList([_StopOnText(tokenizer, width, config.stop_strings, stop_ids)])
            with _head_restricted_to(model, candidates):
                output = _greedy(model, inputs, config.max_new_tokens, eos_ids, pad_id, processors, criteria)
            batch_answers = [
                _answer(tokenizer, ids, end_ids, config.stop_strings, extractive) for ids in output[:, width:].tolist()
            ]
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
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        output = _greedy(model, inputs, max_new_tokens, eos_ids, pad_id, LogitsProcessorList(), StoppingCriteriaList())
    return _answer(tokenizer, output[0, len(ids) :].tolist(), set(eos_ids), (), extractive=False)
