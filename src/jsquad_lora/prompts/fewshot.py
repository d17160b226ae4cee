"""Few-shot examples, chosen deterministically, and a run's prompt renderer (its template and shots)."""

from __future__ import annotations

import random
from typing import Sequence

from jsquad_lora.config.schema import RunConfig
from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError


def select_fewshot(pool: Sequence[Question], k: int, seed: int, question: Question) -> list[Question]:
    """k examples from `pool` (the training split), fixed for (seed, question id), never the question itself."""
    if k <= 0:
        return []
    candidates = [
        i
        for i in random.Random(f"{seed}:{question.id}").sample(range(len(pool)), min(len(pool), k + 1))
        if pool[i].id != question.id
    ]
    if len(candidates) < k:
        raise InputError(
            "prompt.fewshot",
            f"{k} few-shot examples asked, the training split has only {len(candidates)} others",
            fix="lower prompt.fewshot",
        )
    return [pool[i] for i in candidates[:k]]


def make_renderer(cfg: RunConfig, tokenizer, fewshot_pool):
    from jsquad_lora.prompts.templates import render_prompt, render_question_prompt

    if cfg.task == "question":
        render_prompt = render_question_prompt  # noqa: F811 (the reverse task's prompt, same arguments)

    # an example shows its answer: questions without one are not examples
    pool = fewshot_pool if all(q.answers for q in fewshot_pool) else [q for q in fewshot_pool if q.answers]

    def render(q):
        shots = select_fewshot(pool, cfg.prompt.fewshot, cfg.prompt.seed, q) if cfg.prompt.fewshot else ()
        return render_prompt(q, cfg.prompt.template, examples=shots, tokenizer=tokenizer)

    return render
