"""Synthetic cloze questions from the training passages, for models trained from scratch.

A model with random weights has to learn, from 4,420 questions, both Japanese and where in a
passage an answer sits. Cloze questions teach the second skill directly and cheaply: take a
sentence of a training passage, pick a noun phrase (MeCab/unidic nouns), replace it by 何 and
ask for it. JSQuAD questions are largely such rephrasings of one passage sentence, so the skill
transfers. Only training passages are used; the evaluation split is never touched. Off by
default (`train.synthetic_per_passage: 0`); the offline tiny preset turns it on.
"""

from __future__ import annotations

import random
from collections import Counter
from functools import lru_cache
from typing import Sequence

from .data import Question

WINDOW = 14  # characters of the sentence kept on each side of the blank (real questions are short)


@lru_cache(maxsize=1)
def _tagger():
    from fugashi import Tagger

    return Tagger()


def noun_spans(sentence: str) -> list[tuple[int, int]]:
    """(start, end) character spans of maximal runs of nouns (名詞) in `sentence`, 2-15 characters."""
    spans, start, pos, run_start = [], 0, 0, None
    for word in _tagger()(sentence):
        at = sentence.find(word.surface, pos)
        if at < 0:
            run_start = None
            continue
        start, pos = at, at + len(word.surface)
        if word.feature.pos1 == "名詞":
            run_start = start if run_start is None else run_start
            spans.append((run_start, pos))
        else:
            run_start = None
    maximal = {}
    for s, e in spans:  # keep the longest run ending at each start
        if e - s > maximal.get(s, (0, 0))[1] - s:
            maximal[s] = (s, e)
    runs = sorted(set(maximal.values()))
    return [(s, e) for s, e in runs if 2 <= e - s <= 15 and not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for s2, e2 in runs)]


def cloze_questions(passages: Sequence[Question], per_passage: int, seed: int) -> list[Question]:
    """Up to `per_passage` cloze questions for each distinct passage, reproducible for `seed`.

    Blanks are drawn so that their lengths follow the lengths of the real answers in `passages`:
    drawn uniformly, half would be 2-character nouns (9 % of real answers), and a model trained
    on them learns to stop answers too early.
    """
    rng = random.Random(seed)
    seen, per_context = set(), []
    for q in passages:
        if q.context in seen:
            continue
        seen.add(q.context)
        candidates, offset = [], 0
        for sentence in q.context.split("。"):
            if 8 <= len(sentence) <= 200:
                candidates += [(offset, sentence, s, e) for s, e in noun_spans(sentence)]
            offset += len(sentence) + 1
        per_context.append((q, candidates))
    real = Counter(len(q.answers[0]) for q in passages)
    drawn = Counter(e - s for _, candidates in per_context for _, _, s, e in candidates)
    weight = {n: real[n] / len(passages) / (drawn[n] / max(1, sum(drawn.values()))) for n in drawn}
    out = []
    for q, candidates in per_context:
        # weighted sampling without replacement (Efraimidis-Spirakis keys); weight 0 never drawn
        keyed = []
        for candidate in candidates:
            w = weight[candidate[3] - candidate[2]]
            if w > 0:
                keyed.append((rng.random() ** (1 / w), candidate))
        chosen = [c for _, c in sorted(keyed, key=lambda kc: -kc[0])[:per_passage]]
        for n, (offset, sentence, s, e) in enumerate(chosen):
            question = sentence[max(0, s - WINDOW):s] + "何" + sentence[e:e + WINDOW] + "か。"
            out.append(Question(f"{q.id}-cloze{n}", q.title, q.context, question, (sentence[s:e],), (offset + s,)))
    return out
