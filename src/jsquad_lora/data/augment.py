"""Synthetic cloze questions from the training passages, for models trained from scratch.

A model with random weights has to learn, from 4,420 questions, both Japanese and where in a
passage an answer sits. Cloze questions teach the second skill directly and cheaply: take a
sentence of a training passage, pick a noun phrase (MeCab/unidic nouns) and ask for it.
JSQuAD questions are largely such rephrasings of one passage sentence, so the skill transfers.
Three forms, as in the training split's questions: the phrase replaced by 何 in place
(`…何…か。`), or the words just before it or just after it turned into `…のは何か？`
(`…を全面的に代行する役職の名称は？`, `…決定したのはいつ？`). Only training passages are used;
the evaluation split is never touched. Off by default (`train.synthetic_per_passage: 0`); the
offline tiny preset turns it on.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.util.mecab import tagger

WINDOW = 14  # characters of the sentence kept on each side of the blank (real questions are short)
_LEADING_PARTICLE = re.compile(r"^[、，,]?(?:は|が|を|に|で|の|と|も|へ|や)?[、，,]?")  # 「…日、」「…は、」


def noun_spans(sentence: str) -> list[tuple[int, int]]:
    """(start, end) character spans of maximal runs of nouns (名詞) in `sentence`, 2-15 characters."""
    spans, start, pos, run_start = [], 0, 0, None
    for word in tagger()(sentence):
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
    return [
        (s, e)
        for s, e in runs
        if 2 <= e - s <= 15 and not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for s2, e2 in runs)
    ]


def cloze_questions(passages: Sequence[Question], per_passage: int, seed: int) -> list[Question]:
    """Up to `per_passage` cloze questions for each distinct passage, reproducible for `seed`.

    Blanks are drawn so that their lengths follow the lengths of the real answers in `passages`:
    drawn uniformly, most would be short nouns (far more than among real answers), and a model trained
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
    real = Counter(len(q.answers[0]) for q in passages if q.answers)
    drawn = Counter(e - s for _, candidates in per_context for _, _, s, e in candidates)
    weight = {n: real[n] / len(passages) / (drawn[n] / max(1, sum(drawn.values()))) for n in drawn}
    out, forms = [], random.Random(seed + 1)  # its own stream: the blanks drawn do not depend on the forms
    for q, candidates in per_context:
        # weighted sampling without replacement (Efraimidis-Spirakis keys); weight 0 never drawn
        keyed = []
        for candidate in candidates:
            w = weight[candidate[3] - candidate[2]]
            if w > 0:
                keyed.append((rng.random() ** (1 / w), candidate))
        chosen = [c for _, c in sorted(keyed, key=lambda kc: -kc[0])[:per_passage]]
        for n, (offset, sentence, s, e) in enumerate(chosen):
            question = _cloze_question(sentence, s, e, forms.randrange(3))
            out.append(Question(f"{q.id}-cloze{n}", q.title, q.context, question, (sentence[s:e],), (offset + s,)))
    return out


def _cloze_question(sentence: str, start: int, end: int, form: int) -> str:
    """The question asking for `sentence[start:end]`: 0 in place, 1 from the words before it,
    2 from the words after it (forms 1 and 2 fall back to 0 when that side has under 4 characters)."""
    before = sentence[max(0, start - 2 * WINDOW) : start].rstrip("、，,「『（(")
    after = _LEADING_PARTICLE.sub("", sentence[end : end + 2 * WINDOW])
    if form == 1 and len(before) >= 4:
        return before + "のは何か？"
    if form == 2 and len(after) >= 4:
        return after + "のは何か？"
    return sentence[max(0, start - WINDOW) : start] + "何" + sentence[end : end + WINDOW] + "か。"
