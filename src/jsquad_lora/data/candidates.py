"""Answer candidates for generated questions: character spans of a passage found with MeCab (unidic-lite).

    date          年/月/日 numbers joined in that order (1998年12月, 3月5日); an era's year (平成10年, 令和元年)
    number        numerals with their counter or unit (3人, 1998年, 25%, 三つ, 1,200万円, 第2回, 3.5メートル)
    proper_noun   runs of 固有名詞 (日本, ジョン・スミス)
    noun_phrase   runs of nouns with their prefixes and suffixes, 2-20 characters (日本銀行, 第二次世界大戦)

JSQuAD's answers are mostly such spans: short noun phrases, names, numbers and dates. Hand-written because
MeCab gives words, not answer-like spans: the runs are joined here from unidic's parts of speech (the cloze
augmenter, `augment.py`, joins noun runs the same way).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from jsquad_lora.util.mecab import tagger

#: kinds in the order candidates are offered: the spans most often asked about first
KINDS = ("date", "number", "proper_noun", "noun_phrase")
#: the longest text one MeCab call gets (a very long text kills the process: util/mecab.py)
MECAB_CHUNK = 2000
#: a noun phrase's length in characters: one character is rarely an answer, longer than 20 rarely a phrase
NOUN_PHRASE_CHARS = (2, 20)
ERAS = ("明治", "大正", "昭和", "平成", "令和")
#: nouns that follow a numeral as its unit although unidic does not tag them as counters
UNIT_NOUNS = {"世紀", "年代", "年間", "時間", "分間", "秒間", "日間", "週間", "カ月", "ヵ月", "ヶ月", "か月"}
UNIT_NOUNS |= {"km", "kg", "cm", "mm", "m", "g"}
_PERCENT = {"%", "％"}
#: characters joining two numerals into one number (1,200 / 3.5)
_NUMBER_JOINERS = {",", "，", ".", "．"}
_DATE_ORDER = {"年": 0, "元年": 0, "月": 1, "日": 2}
_KANA = re.compile(r"^[\u3040-\u30ff\uff66-\uff9f]$")
_HIRAGANA = re.compile(r"^[\u3040-\u309f]+$")


@dataclass(frozen=True)
class Candidate:
    """A span of the passage: `passage[start:start + len(text)] == text`; `kind` is one of KINDS."""

    text: str
    start: int
    kind: str


@dataclass(frozen=True)
class _Word:
    surface: str
    start: int
    pos1: str
    pos2: str
    pos3: str

    @property
    def end(self) -> int:
        return self.start + len(self.surface)


def mecab_candidates(text: str, *, limit: int | None = None) -> list[Candidate]:
    """The answer candidates of `text`, one per distinct span text (at its first occurrence, with the first of
    KINDS it was found as), ordered by kind (KINDS) then position; the first `limit` of them (None: all).
    A single kana and punctuation are never candidates."""
    found: list[Candidate] = []
    for offset, chunk in _chunks(text):
        words = _words(chunk, offset)
        numbers = _numbers_and_dates(words, text)
        found += numbers + _proper_nouns(words, text) + _noun_phrases(words, text, numbers)
    best: dict[str, Candidate] = {}
    for c in found:
        if _skipped(c.text):
            continue
        known = best.get(c.text)
        if known is None:
            best[c.text] = c
        else:  # the kind that ranks first, at the first occurrence
            kind = min(known.kind, c.kind, key=KINDS.index)
            best[c.text] = Candidate(c.text, min(known.start, c.start), kind)
    ordered = sorted(best.values(), key=lambda c: (KINDS.index(c.kind), c.start, -len(c.text)))
    return ordered[:limit] if limit is not None else ordered


def _skipped(text: str) -> bool:
    stripped = text.strip()
    if not stripped or stripped != text:
        return True
    if _KANA.match(text):
        return True
    return all(unicodedata.category(ch)[0] in "PSZ" for ch in text)


def _chunks(text: str) -> list[tuple[int, str]]:
    """(offset, piece) covering `text`, each at most MECAB_CHUNK characters, cut after a line or 。 where one is."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + MECAB_CHUNK)
        if end < len(text):
            cut = max(text.rfind("\n", start, end), text.rfind("。", start, end))
            end = cut + 1 if cut > start else end
        out.append((start, text[start:end]))
        start = end
    return out


def _words(chunk: str, offset: int) -> list[_Word]:
    """MeCab's words of `chunk` with their offsets (+ `offset`) into the passage."""
    words, pos = [], 0
    for word in tagger()(chunk):
        surface = word.surface
        at = chunk.find(surface, pos) if surface else -1
        if at < 0:
            continue
        pos = at + len(surface)
        f = word.feature
        words.append(_Word(surface, offset + at, f.pos1, f.pos2, f.pos3))
    return words


def _is_numeral(w: _Word) -> bool:
    return w.pos1 == "名詞" and w.pos2 == "数詞"


def _is_counter(w: _Word) -> bool:
    return (
        (w.pos1 == "名詞" and w.pos3 == "助数詞可能")
        or (w.pos1 == "接尾辞" and w.pos2 == "名詞的")
        or w.surface in _PERCENT
        or w.surface in UNIT_NOUNS
    )


def _numbers_and_dates(words: list[_Word], text: str) -> list[Candidate]:
    """Numerals with their counters; 年/月/日 numbers in order, and an era's year, joined into dates."""
    units = []  # (first word index, last word index, counter surface or None)
    i = 0
    while i < len(words):
        if not _is_numeral(words[i]):
            i += 1
            continue
        first = i - 1 if i > 0 and words[i - 1].pos1 == "接頭辞" and words[i - 1].end == words[i].start else i
        j = i
        while j + 1 < len(words) and words[j + 1].start == words[j].end:
            nxt = words[j + 1]
            if _is_numeral(nxt):
                j += 1
            elif (
                nxt.surface in _NUMBER_JOINERS
                and j + 2 < len(words)
                and _is_numeral(words[j + 2])
                and words[j + 2].start == nxt.end
            ):
                j += 2
            else:
                break
        counter = None
        if j + 1 < len(words) and words[j + 1].start == words[j].end and _is_counter(words[j + 1]):
            j += 1
            counter = words[j].surface
        units.append((first, j, counter))
        i = j + 1
    out = [_span(words, a, b, "number", text) for a, b, _ in units]
    k = 0
    while k < len(units):  # dates: runs of adjacent 年 → 月 → 日 units, or an era before a year
        a, b, counter = units[k]
        era = a > 0 and words[a - 1].surface in ERAS and words[a - 1].end == words[a].start and counter == "年"
        start, end, last = (a - 1 if era else a), b, _DATE_ORDER.get(counter or "")
        m = k + 1
        while (
            last is not None
            and m < len(units)
            and words[units[m][0]].start == words[end].end
            and _DATE_ORDER.get(units[m][2] or "", -1) > last
        ):
            end, last = units[m][1], _DATE_ORDER[units[m][2]]
            m += 1
        if era or m > k + 1:
            out.append(_span(words, start, end, "date", text))
        k = m
    for i, w in enumerate(words[:-1]):  # an era's first year: 令和元年
        if w.surface in ERAS and words[i + 1].surface == "元年" and words[i + 1].start == w.end:
            out.append(_span(words, i, i + 1, "date", text))
    return out


def _proper_nouns(words: list[_Word], text: str) -> list[Candidate]:
    """Runs of adjacent 固有名詞, a ・ between two of them included; an era before a number is a date's."""
    out, i = [], 0
    while i < len(words):
        if not _is_proper(words, i):
            i += 1
            continue
        j = i
        while j + 1 < len(words) and words[j + 1].start == words[j].end:
            if _is_proper(words, j + 1):
                j += 1
            elif words[j + 1].surface == "・" and j + 2 < len(words) and _is_proper(words, j + 2):
                j += 2
            else:
                break
        out.append(_span(words, i, j, "proper_noun", text))
        i = j + 1
    return out


def _is_proper(words: list[_Word], i: int) -> bool:
    w = words[i]
    if w.pos1 != "名詞" or w.pos2 != "固有名詞":
        return False
    followed = i + 1 < len(words) and words[i + 1].start == w.end
    return not (w.surface in ERAS and followed and (_is_numeral(words[i + 1]) or words[i + 1].surface == "元年"))


def _noun_phrases(words: list[_Word], text: str, numbers: list[Candidate]) -> list[Candidate]:
    """Maximal runs of adjacent nouns with their prefixes and suffixes (not starting with a suffix nor ending
    with a prefix), NOUN_PHRASE_CHARS long; not a bare numeral, nor a run that starts or ends inside one of
    `numbers` (1,200 is one number, not the phrases 1 and 200万円)."""
    inside = {k for c in numbers for k in range(c.start + 1, c.start + len(c.text))}
    out, i = [], 0
    low, high = NOUN_PHRASE_CHARS
    while i < len(words):
        if words[i].pos1 not in ("名詞", "接頭辞"):
            i += 1
            continue
        j = i
        while j + 1 < len(words) and words[j + 1].start == words[j].end:
            nxt = words[j + 1]
            if nxt.pos1 in ("名詞", "接頭辞", "接尾辞"):
                j += 1
            elif nxt.surface == "・" and j + 2 < len(words) and words[j + 2].pos1 == "名詞":
                j += 2
            else:
                break
        a, b = i, j
        while b >= a and words[b].pos1 == "接頭辞":
            b -= 1
        if b >= a and any(words[k].pos1 == "名詞" for k in range(a, b + 1)):
            span = _span(words, a, b, "noun_phrase", text)
            numeral = all(_is_numeral(words[k]) for k in range(a, b + 1))
            cut = span.start in inside or span.start + len(span.text) in inside
            formal = _HIRAGANA.match(span.text) is not None  # こと, もの, ため: nouns that name nothing
            if low <= len(span.text) <= high and not (numeral or cut or formal):
                out.append(span)
        i = j + 1
    return out


def _span(words: list[_Word], first: int, last: int, kind: str, text: str) -> Candidate:
    """The candidate covering words[first..last] of the passage `text`."""
    start = words[first].start
    return Candidate(text[start : words[last].end], start, kind)
