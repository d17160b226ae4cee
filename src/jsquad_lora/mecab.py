"""The one MeCab tagger cache (fugashi + unidic-lite): the stability scorer tokenises with it, the
cloze augmenter finds nouns with it. One tagger per option set, built once."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def tagger(options: str = ""):
    """A fugashi Tagger built with `options` (e.g. "-Owakati": space-separated words)."""
    from fugashi import Tagger

    return Tagger(options)
