"""Prompt templates (pure functions) and deterministic few-shot selection.

Templates, each string-exact with its source:
- `seed`: the reference experiment's prompt (SPEC §1), rinna's literal `<NL>` newline marker.
- `newline`: the seed prompt with real newlines for `<NL>` (for tokenizers other than rinna's).
- `harness`: the jp-stable harness, rinna instruction format, prompt version 0.4
  (DESCRIPTION header, `文脈：…<NL>質問：…`, few-shot examples separated by `<NL>`).
- `fintan`: the jp-stable harness's prompt 0.2, taken from fintan.jp's ChatGPT-vs-BERT comparison.
- `chat`: the seed instruction inside the tokenizer's own chat template (real newlines).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from .data import Question
from .errors import InputError

TEMPLATES = ("seed", "newline", "harness", "fintan", "chat")
NL = "<NL>"
SEED_INSTRUCTION = "質問に対する回答を文章から抽出してください。"
HARNESS_DESCRIPTION = (
    "ユーザー: 与えられた文脈から、質問に対する答えを抜き出してください。<NL>システム: 分かりました。<NL>"
)
FINTAN_DESCRIPTION = "質問に対する回答を文章から一言で抽出してください。回答は名詞で答えてください。\n\n"
#: the reference experiment's free-generation side check, before and after tuning
SIDE_CHECK_PROMPT = "ユーザー: 自然言語処理について教えて下さい。<NL>システム:"


def _seed_text(q: Question) -> str:
    return f"ユーザー: {SEED_INSTRUCTION}{NL}文章:{q.context}{NL}質問:{q.question}{NL}システム: "


def _newline_text(q: Question) -> str:
    return _seed_text(q).replace(NL, "\n")


def _harness_text(q: Question) -> str:
    return f"ユーザー: 文脈：{q.context}{NL}質問：{q.question}{NL}システム: "


def _fintan_text(q: Question) -> str:
    return f"文章:{q.context}\n質問:{q.question}\n回答:"


# template → (header, separator between shots, per-question text ending where the answer starts)
_PLAIN = {
    "seed": ("", NL, _seed_text),
    "newline": ("", "\n", _newline_text),
    "harness": (HARNESS_DESCRIPTION, NL, _harness_text),
    "fintan": (FINTAN_DESCRIPTION, "\n\n", _fintan_text),
}


def _chat_user_message(q: Question) -> str:
    return f"{SEED_INSTRUCTION}\n文章:{q.context}\n質問:{q.question}"


def render_prompt(
    question: Question,
    template: str = "seed",
    *,
    with_answer: bool = False,
    examples: Sequence[Question] = (),
    tokenizer: Any = None,
) -> str:
    """The exact text the model sees for `question` (ending where the answer starts), with the
    first gold answer appended when `with_answer`. `examples` are few-shot demonstrations,
    rendered with their first gold answer. `tokenizer` is needed only for `chat`."""
    answer = question.answers[0] if with_answer else ""
    if template in _PLAIN:
        header, separator, text = _PLAIN[template]
        shots = "".join(text(e) + e.answers[0] + separator for e in examples)
        return header + shots + text(question) + answer
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise InputError(
                "prompt.template=chat",
                "the tokenizer has no chat template",
                fix="use a chat model's tokenizer (e.g. an instruct model) or another template: seed, harness, fintan",
            )
        messages = []
        for e in examples:
            messages += [
                {"role": "user", "content": _chat_user_message(e)},
                {"role": "assistant", "content": e.answers[0]},
            ]
        messages.append({"role": "user", "content": _chat_user_message(question)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer
    raise InputError("prompt.template", f"unknown template {template!r}", fix=f"use one of: {', '.join(TEMPLATES)}")


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
