"""An Ollama `Modelfile` for a GGUF export: the run's prompt as a Go text/template around the user's message.

The run's prompt of a question is rendered once with placeholder passage and question, then cut into
what Ollama fills in: the message (from the line that holds the passage to the end of the question:
`文章:{passage}\\n質問:{question}` for the chat and newline templates), SYSTEM (the instruction line just
before it) and the fixed text around them, which becomes TEMPLATE. The BOS token is left out where the
GGUF file tells llama.cpp to add it (`tokenizer.ggml.add_bos_token`), as Ollama's own templates do.
Decoding as the run's evaluation: greedy (temperature 0, no repeat penalty), at most `eval.max_new_tokens`
tokens, stopped at the run's stop strings and end tokens. Ollama is not run here (not installable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError
from jsquad_lora.prompts.templates import NL

PASSAGE, QUESTION = "\ue000", "\ue001"  # private-use characters: no template writes them
SYSTEM_IF = "{{ if .System }}{{ .System }}"


@dataclass(frozen=True)
class ChatTurn:
    """The run's prompt as an Ollama template: `template` around the user's message, `system` its default
    SYSTEM, and the message's text around passage and question (`before` passage `between` question)."""

    template: str
    system: str
    before: str
    between: str

    def message(self, passage: str, question: str) -> str:
        return self.before + passage + self.between + question


def _line_start(text: str) -> int:
    """Where the last line of `text` starts: after its last newline or rinna's <NL> marker."""
    return max(text.rfind("\n") + 1, text.rfind(NL) + len(NL) if NL in text else 0)


def chat_turn(render: Callable[[Question], str], bos: str | None) -> ChatTurn:
    """The run's prompt format (`render`, as evaluation renders a question) cut for Ollama; `bos`: the BOS
    text llama.cpp adds itself (None when it adds none)."""
    text = render(Question("modelfile", "", PASSAGE, QUESTION, ("",), (0,)))
    if text.count(PASSAGE) != 1 or text.count(QUESTION) != 1 or text.index(PASSAGE) > text.index(QUESTION):
        raise InputError("prompt.template", "the prompt does not hold the passage once, then the question once")
    head, rest = text.split(PASSAGE)
    between, tail = rest.split(QUESTION)
    if bos and head.startswith(bos):
        head = head[len(bos) :]
    head, before = head[: _line_start(head)], head[_line_start(head) :]
    frame, system = head, ""
    if head.endswith(("\n", NL)):  # the line before the message: the instruction, as SYSTEM
        sep = "\n" if head.endswith("\n") else NL
        start = _line_start(head[: -len(sep)])
        if head[start : -len(sep)].strip():
            frame, system = head[:start] + SYSTEM_IF + sep + "{{ end }}", head[start : -len(sep)]
    fixed = head + tail
    if "{{" in fixed or '"""' in fixed + system:
        raise InputError("prompt.template", 'the prompt\'s text holds {{ or """, which a Modelfile cannot quote')
    return ChatTurn(frame + "{{ .Prompt }}" + tail, system, before, between)


def _quoted(value: str) -> str:
    """A Modelfile value: triple quotes keep newlines and surrounding spaces (Ollama unescapes nothing)."""
    return f'"""{value}"""' if "\n" in value or value != value.strip() or '"' in value else f'"{value}"'


def stop_strings(tokenizer, eos_ids: Sequence[int], turn: ChatTurn, run_stops: Sequence[str]) -> list[str]:
    """The run's stop strings, its end-of-sequence tokens and the turn markers of its template's end."""
    ends = [tokenizer.convert_ids_to_tokens(i) for i in eos_ids]
    tail = turn.template.split("{{ .Prompt }}")[-1]
    markers = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content in tail]
    return list(dict.fromkeys([*run_stops, *ends, *markers]))


def modelfile(gguf_name: str, turn: ChatTurn, stops: Sequence[str], max_new_tokens: int, context: int) -> str:
    message = turn.message("<passage>", "<question>")
    lines = [
        "# Ollama: ollama create NAME -f Modelfile, then ollama run NAME (written by jsquad-lora export; not run",
        "# with Ollama here). A message holds the passage and the question as the run's prompt did:",
        *("#   " + line for line in message.split("\n")),
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quoted(turn.template)}",
        *([f"SYSTEM {_quoted(turn.system)}"] if turn.system else []),
        "# greedy, as the run's evaluation decoded (Ollama's default repeat penalty would change the answers)",
        "PARAMETER temperature 0",
        "PARAMETER repeat_penalty 1",
        f"PARAMETER num_predict {max_new_tokens}",
        f"PARAMETER num_ctx {context}",
        *(f"PARAMETER stop {_quoted(stop)}" for stop in stops),
    ]
    return "\n".join(lines) + "\n"
