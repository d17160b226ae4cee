"""Prompt templates: pure functions registered in `registry.TEMPLATES`.

Adding a template is one `@register_template` function in this file: it gets the question, its
few-shot examples and the tokenizer, and returns the text that ends where the answer starts.
`prompt.template`, the CLI's `--template` choices and the docs' list all read `TEMPLATES`.
Each template below is string-exact with its source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError, brief
from jsquad_lora.registry import TEMPLATES

#: rinna's newline marker: written for a newline in its prompts, and a stop string of generation
NL = "<NL>"
SEED_INSTRUCTION = "質問に対する回答を文章から抽出してください。"
HARNESS_DESCRIPTION = (
    "ユーザー: 与えられた文脈から、質問に対する答えを抜き出してください。<NL>システム: 分かりました。<NL>"
)
FINTAN_DESCRIPTION = "質問に対する回答を文章から一言で抽出してください。回答は名詞で答えてください。\n\n"
#: the reference experiment's free-generation side check, before and after tuning
SIDE_CHECK_PROMPT = "ユーザー: 自然言語処理について教えて下さい。<NL>システム:"
#: task=question (passage + answer → question): the instruction, and the label of the answer it is given
QUESTION_INSTRUCTION = "文章と回答から、その回答が答えになる質問を作ってください。"
#: render(question, examples, tokenizer) -> the prompt text, ending where the answer starts
RenderTemplate = Callable[[Question, Sequence[Question], Any], str]


@dataclass(frozen=True)
class Template:
    name: str
    help: str
    render: RenderTemplate


def register_template(name: str, help: str) -> Callable[[RenderTemplate], RenderTemplate]:
    """Decorator: registers `render` as template `name`."""

    def register(render: RenderTemplate) -> RenderTemplate:
        TEMPLATES.register(name, Template(name, help, render))
        return render

    return register


def _with_shots(header: str, separator: str, text: Callable[[Question], str], question, examples) -> str:
    """`header`, each example's text + first gold answer + `separator`, then the question's text."""
    return header + "".join(text(e) + e.answers[0] + separator for e in examples) + text(question)


def _seed_text(q: Question) -> str:
    return f"ユーザー: {SEED_INSTRUCTION}{NL}文章:{q.context}{NL}質問:{q.question}{NL}システム: "


@register_template("seed", "the reference experiment's prompt (SPEC §1), rinna's literal <NL> newline marker")
def seed(question: Question, examples: Sequence[Question], tokenizer: Any) -> str:
    return _with_shots("", NL, _seed_text, question, examples)


def _newline_text(q: Question) -> str:
    return _seed_text(q).replace(NL, "\n")


@register_template("newline", "the seed prompt with real newlines for <NL> (for tokenizers other than rinna's)")
def newline(question: Question, examples: Sequence[Question], tokenizer: Any) -> str:
    return _with_shots("", "\n", _newline_text, question, examples)


def _harness_text(q: Question) -> str:
    return f"ユーザー: 文脈：{q.context}{NL}質問：{q.question}{NL}システム: "


@register_template("harness", "the jp-stable harness, rinna instruction format, prompt version 0.4")
def harness(question: Question, examples: Sequence[Question], tokenizer: Any) -> str:
    return _with_shots(HARNESS_DESCRIPTION, NL, _harness_text, question, examples)


def _fintan_text(q: Question) -> str:
    return f"文章:{q.context}\n質問:{q.question}\n回答:"


@register_template("fintan", "the jp-stable harness's prompt 0.2, from fintan.jp's ChatGPT-vs-BERT comparison")
def fintan(question: Question, examples: Sequence[Question], tokenizer: Any) -> str:
    return _with_shots(FINTAN_DESCRIPTION, "\n\n", _fintan_text, question, examples)


def _chat_user_message(q: Question) -> str:
    return f"{SEED_INSTRUCTION}\n文章:{q.context}\n質問:{q.question}"


@register_template("chat", "the seed instruction inside the tokenizer's own chat template (real newlines)")
def chat(question: Question, examples: Sequence[Question], tokenizer: Any) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "prompt.template=chat",
            "no tokenizer given" if tokenizer is None else "the tokenizer has no chat template",
            fix="use a chat model's tokenizer (`prompt --tokenizer HUB_ID_OR_PATH`; an instruct model) "
            "or another template: " + ", ".join(n for n in TEMPLATES if n != "chat"),
        )
    messages = []
    for e in examples:
        messages += [
            {"role": "user", "content": _chat_user_message(e)},
            {"role": "assistant", "content": e.answers[0]},
        ]
    messages.append({"role": "user", "content": _chat_user_message(question)})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


#: the side check's request, said in each template's own dialogue format (`side_check_prompt`)
SIDE_CHECK_REQUEST = "自然言語処理について教えて下さい。"


def side_check_prompt(template: str, tokenizer: Any = None) -> str:
    """The side check's free-generation prompt in the run's own format: rinna's dialogue for the templates in
    it (seed, harness), with real newlines for newline and fintan, the tokenizer's chat template for chat.
    A prompt in a format the model was not tuned on shows nothing (Gemma answered rinna's with digits)."""
    if template == "chat":
        messages = [{"role": "user", "content": SIDE_CHECK_REQUEST}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if template in ("newline", "fintan"):
        return SIDE_CHECK_PROMPT.replace(NL, "\n") + " "
    return SIDE_CHECK_PROMPT


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
    if template not in TEMPLATES:
        raise InputError(
            "prompt.template", f"Unknown template {brief(template)}", fix=f"Available: {', '.join(TEMPLATES)}"
        )
    answer = question.answers[0] if with_answer and question.answers else ""
    return TEMPLATES[template].render(question, examples, tokenizer) + answer


def render_question_prompt(
    question: Question, template: str, *, examples: Sequence[Question] = (), tokenizer=None
) -> str:
    """task=question: the prompt asking for a question whose answer is `question.question` (as_question_task puts
    the answer there, and the human question in `answers`), in the dialogue format of `template`: the tokenizer's
    chat template for chat, rinna's `ユーザー: ...<NL>システム: ` for seed and harness, real newlines otherwise."""
    if template not in TEMPLATES:
        raise InputError(
            "prompt.template", f"Unknown template {brief(template)}", fix=f"Available: {', '.join(TEMPLATES)}"
        )

    def request(q: Question, nl: str) -> str:
        return f"{QUESTION_INSTRUCTION}{nl}文章:{q.context}{nl}回答:{q.question}"

    if template == "chat":
        chat(question, (), tokenizer)  # the same error where the tokenizer has no chat template
        messages = []
        for e in examples:
            messages += [{"role": "user", "content": request(e, "\n")}, {"role": "assistant", "content": e.answers[0]}]
        messages.append({"role": "user", "content": request(question, "\n")})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    nl = NL if template in ("seed", "harness") else "\n"
    turn = lambda q: f"ユーザー: {request(q, nl)}{nl}システム: "  # noqa: E731
    return "".join(turn(e) + e.answers[0] + nl for e in examples) + turn(question)
