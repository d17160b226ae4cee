"""Every token's text as bytes, indexed for substring search: what extractive decoding and the stop rules read.

Written here because no library maps a tokenizer's vocabulary to the raw bytes each token adds
in mid-sequence context (sentencepiece's `▁`, byte-level BPE's printable stand-ins, byte fallback).
"""

from __future__ import annotations

import re
import weakref
from collections import defaultdict
from typing import Sequence

_KEY = 6  # a piece is indexed by its first (up to) 6 bytes: two kana/kanji in UTF-8
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece byte fallback


def decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _gpt2_byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's `bytes_to_unicode`), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


class TokenVocab:
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


_VOCABS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer → (len(tokenizer), TokenVocab)


def token_vocab(tokenizer) -> TokenVocab:
    cached = _VOCABS.get(tokenizer)
    if cached is None or cached[0] != len(tokenizer):
        cached = (len(tokenizer), TokenVocab(tokenizer))
        _VOCABS[tokenizer] = cached
    return cached[1]
