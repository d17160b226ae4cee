"""The one MeCab tagger cache (fugashi + unidic-lite): the stability scorer tokenises with it, the
cloze augmenter finds nouns with it. One tagger per option set, built once.

MeCab kills the process (SIGSEGV) when one call gets a long text (hundreds of thousands of characters;
benchmarks/probes/mecab_limit.py measures where). Every caller bounds what it passes: the stability scorer tags at most
scoring.MECAB_MAX_CHARS (2,000) characters per call, the augmenter only sentences of up to 200."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def tagger(options: str = ""):
    """A fugashi Tagger built with `options` (e.g. "-Owakati": space-separated words)."""
    from fugashi import Tagger

    return Tagger(options)
