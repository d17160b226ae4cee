"""A finished run checked and loaded once (`load_run_model`): what `ask`, `serve` and `export` share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from jsquad_lora.config.load import load_config
from jsquad_lora.config.schema import RunConfig
from jsquad_lora.data.question import Question
from jsquad_lora.encoding.windows import Window
from jsquad_lora.errors import InputError
from jsquad_lora.generate.decoding import ScoredAnswer, best_window, decoding_config
from jsquad_lora.model.source import base_model_and_tokenizer, model_source
from jsquad_lora.prompts.fewshot import make_renderer
from jsquad_lora.prompts.templates import NL

#: what a run's adapter/ holds: a LoRA adapter, or the full weights when lora.enabled=false
ADAPTER_FILES = {
    True: ("adapter_config.json", "adapter_model.safetensors"),
    False: ("config.json", "model.safetensors"),
}


def _missing(directory: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not (directory / name).is_file()]


def _check_run_dir(run_dir: Path, cfg) -> None:
    """The trained model a run directory must hold for `ask`, named file by file when missing."""
    finish = f"finish the run (jsquad-lora run --resume --output {run_dir}, with the run's overrides), or pass "
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        raise InputError(
            run_dir,
            "no trained model here: adapter/ is missing (the run has not finished training)",
            fix=f"{finish}a finished run directory",
        )
    names = ADAPTER_FILES[bool(cfg.lora.enabled)]
    if (adapter / "model.safetensors.index.json").is_file():
        names = tuple(n for n in names if n != "model.safetensors")  # full weights in shards
    if missing := _missing(adapter, names):
        raise InputError(
            adapter,
            f"the trained model is incomplete: {', '.join(missing)} missing",
            fix=f"{finish}a finished run directory (a copied run needs all of adapter/)",
        )
    source = model_source(cfg.model)
    if source.check_run is not None:  # a model made per run (tiny) keeps its base in the run directory
        source.check_run(run_dir)


def check_run(run_dir: Path) -> RunConfig:
    """A finished run directory's config, after checking that it holds a complete trained model;
    every problem (no directory, no config.yaml, a damaged one, no trained model) is an InputError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(
            run_dir,
            "run directory not found" if not run_dir.exists() else "not a run directory but a file",
            fix="pass a directory written by `jsquad-lora run`",
        )
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise InputError(
            run_dir, "not a run directory (no config.yaml)", fix="pass a directory written by `jsquad-lora run`"
        )
    try:
        cfg = load_config(config_path)
    except InputError as err:
        raise InputError(
            err.source,
            err.problem,
            where=err.where,
            fix=f"{err.fix}; this is the run's own config.yaml, written by `jsquad-lora run`: restore it, "
            f"or run again (jsquad-lora run --overwrite --output {run_dir})",
        ) from None
    _check_run_dir(run_dir, cfg)
    return cfg


def load_model(run_dir: Path, cfg: RunConfig):
    """(trained model, tokenizer) of a checked run: the base with the adapter merged in, or the full
    weights; files that cannot be loaded are an InputError naming the run."""
    from safetensors import SafetensorError

    from jsquad_lora.model.lora import load_trained

    try:
        model, tokenizer = base_model_and_tokenizer(cfg, run_dir, ())
        return load_trained(model, run_dir / "adapter", cfg.lora.enabled), tokenizer
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise InputError(
            run_dir,
            f"the run's model could not be loaded ({(str(err).strip().splitlines() or [type(err).__name__])[0][:300]})",
            fix="its files are damaged or from another version: copy the run directory again, or re-run it "
            f"(jsquad-lora run --overwrite --output {run_dir})",
        ) from None


def answer_object(context: str, windows: Sequence[Window], answers: Sequence[ScoredAnswer]) -> dict:
    """What `ask --json` and `serve` say of one question, from its windows' answers: "answer" (null where the
    model abstained, with a "reason"), its code-point offsets in `context` ("start", "end": its first occurrence
    in the chosen window), "windows" read, the chosen "window" and its "score" (null when not scored)."""
    k = best_window(answers)
    if k is None:
        where = f"none of its {len(windows)} windows" if len(windows) > 1 else "the passage"
        return {
            "answer": None,
            "start": None,
            "end": None,
            "abstained": True,
            "reason": f"the model found no answer to the question in {where}",
            "windows": len(windows),
            "window": None,
            "score": None,
        }
    text, window = answers[k].text, windows[k]
    inside = window.question.context.find(text)
    start = window.start + inside if inside >= 0 else context.find(text)
    return {
        "answer": text,
        # code-point offsets of the answer in `context`, null if it is not in it (greedy decoding may invent)
        "start": start if start >= 0 else None,
        "end": start + len(text) if start >= 0 else None,
        "abstained": False,
        "reason": None,
        "windows": len(windows),
        "window": k,
        "score": answers[k].score,
    }


#: a run's task → what it does instead of the other task, and how to use it (LoadedRun._require_task)
TASK_REFUSALS = {
    "answer": (
        "answers questions; it does not write them",
        "answer a question with answer(context, question) (`ask --question`, POST /v1/answer), or load a "
        "task=question run to write questions",
    ),
    "question": (
        "writes questions; it does not answer them",
        "write a question for an answer with write_question(context, answer) (`ask --answer`, POST /v1/question), "
        "or load a task=answer run to answer questions",
    ),
}


@dataclass
class LoadedRun:
    """A finished run's trained model, tokenizer and prompt format, loaded once (`load_run_model`)
    and used for any number of questions (`ask`, `serve`)."""

    run_dir: Path
    cfg: RunConfig
    model: Any
    tokenizer: Any
    render: Callable[[Question], str]

    def windows(self, context: str, question: str) -> list[Window]:
        """The windows the run reads `context` in for `question`, as evaluation does (one where the prompt fits
        `model.max_length` with room for the answer)."""
        from jsquad_lora.encoding.windows import passage_windows

        q = Question("ask", "", context, question, (), ())
        budget = self.cfg.model.max_length - self.cfg.eval.max_new_tokens
        model = self.cfg.model
        return passage_windows(q, self.render, self.tokenizer, budget, model.window_overlap, model.window_tokens)

    def window_prompt(self, window: Window) -> str:
        return self.render(window.question)

    def prompt(self, context: str, question: str) -> tuple[str, str]:
        """(prompt, the passage it holds) of the first window: the whole passage where it fits."""
        first = self.windows(context, question)[0].question
        return self.render(first), first.context

    def generate(self, prompts: list[str], passages: list[str], decoding: str | None = None) -> list[str]:
        """Answers to `prompts` in one batched generation (each equal to its prompt's answer alone),
        in `decoding` mode (default: the run's `eval.decoding`)."""
        from jsquad_lora.generate.greedy import generate_answers

        return generate_answers(self.model, self.tokenizer, prompts, passages, decoding_config(self.cfg, decoding))

    def answer_windows(self, windows: list[Window], decoding: str | None = None) -> list[ScoredAnswer]:
        """Every window's answer, as evaluation gives it: a question read in one window by plain generation
        unless the run abstains, every other window scored (`generate_scored`), one batch each."""
        from jsquad_lora.generate.greedy import generate_scored

        config = decoding_config(self.cfg, decoding)
        plain = [k for k, w in enumerate(windows) if w.count == 1 and not config.abstain]
        scored = [k for k in range(len(windows)) if k not in set(plain)]
        out: list[ScoredAnswer | None] = [None] * len(windows)
        if plain:
            prompts = [self.render(windows[k].question) for k in plain]
            texts = self.generate(prompts, [windows[k].question.context for k in plain], decoding)
            for k, text in zip(plain, texts):
                out[k] = ScoredAnswer(text, None)
        if scored:
            prompts = [self.render(windows[k].question) for k in scored]
            passages = [windows[k].question.context for k in scored]
            for k, answer in zip(scored, generate_scored(self.model, self.tokenizer, prompts, passages, config)):
                out[k] = answer
        return out  # type: ignore[return-value]

    def _require_task(self, task: str) -> None:
        """An InputError unless this run is of `task`, saying what it does instead and how to use it."""
        if self.cfg.task != task:
            does, fix = TASK_REFUSALS[self.cfg.task]
            raise InputError(self.run_dir, f"a task={self.cfg.task} run {does}", fix=fix)

    def answer(self, context: str, question: str, decoding: str | None = None) -> str | None:
        """The run's answer to one question about `context` (None: it abstained); a task=answer run's."""
        self._require_task("answer")
        windows = self.windows(context, question)
        return answer_object(context, windows, self.answer_windows(windows, decoding))["answer"]

    # task=question: passage + answer → the question whose answer it is

    def question_prompt(self, context: str, answer: str, field: str = "context") -> str:
        """A task=question run's prompt asking for a question whose answer is `answer` in `context`: the whole
        passage in one prompt, as the run was trained and evaluated (a window without the answer would ask about
        nothing), or an InputError naming `field` (what the caller calls the passage)."""
        from jsquad_lora.encoding.tokens import prompt_ids

        self._require_task("question")
        prompt = self.render(Question("ask", "", context, answer, (), ()))
        m, room = self.cfg.model, self.cfg.eval.max_new_tokens
        length = len(prompt_ids(self.tokenizer, prompt))
        if length > m.max_length - room:
            raise InputError(
                field,
                f"the passage and answer make a prompt of {length} tokens, over the {m.max_length - room} this "
                f"run's prompt may take (model.max_length {m.max_length} less eval.max_new_tokens {room}), and "
                "task=question reads a passage in one prompt (a window without the answer would ask about nothing)",
                fix="pass a shorter passage: the sentences around the answer (`data generate` cuts documents to "
                "fit one prompt)",
            )
        return prompt

    def write_questions(self, prompts: list[str], passages: list[str]) -> list[str]:
        """The questions of `question_prompt`s (`passages`: their passages) in one batched greedy generation, each
        equal to its prompt's question alone."""
        return self.generate(prompts, passages, "greedy")

    def write_question(self, context: str, answer: str) -> str:
        """A task=question run's greedy question whose answer is `answer`, about `context` (one prompt)."""
        return self.write_questions([self.question_prompt(context, answer)], [context])[0]

    # free generation (serve's OpenAI routes): a conversation or a raw prompt, greedy, not extractive

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """A conversation ({"role": system, user or assistant, "content"} dicts) as one prompt in the run's format:
        in the tokenizer's chat template when the run's template is `chat`, else in the seed prompt's dialogue
        format (`ユーザー: ...<NL>システム: `, a system message a line of its own, with the run's newline). A user
        message written as the run's prompt writes a question gives that question's prompt (no few-shot examples)."""
        if self.cfg.prompt.template == "chat":
            from jinja2 import TemplateError

            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except TemplateError as err:
                raise InputError("messages", f"the model's chat template refuses them: {err}") from None
        nl = NL if NL in self.render(Question("chat", "", "。", "?", ("",), (0,))) else "\n"
        speaker = {"system": "", "user": "ユーザー: ", "assistant": "システム: "}
        return "".join(f"{speaker[m['role']]}{m['content']}{nl}" for m in messages) + speaker["assistant"]

    def complete(self, prompt: str, max_new_tokens: int | None = None, stop: Sequence[str] = ()) -> tuple[str, str]:
        """(text, why it ended) of the greedy continuation of a raw `prompt`, cut before the first EOS or `stop`
        string: "stop", or "length" when `max_new_tokens` (default `eval.max_new_tokens`) ran out first. The
        prompt and those tokens must fit `model.max_length`."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from jsquad_lora.encoding.tokens import prompt_ids
        from jsquad_lora.generate.greedy import _greedy, _StopOnText, inference_mode, special_ids
        from jsquad_lora.generate.vocab import decode

        ids = prompt_ids(self.tokenizer, prompt)
        room = max_new_tokens or self.cfg.eval.max_new_tokens
        if len(ids) + room > self.cfg.model.max_length:
            raise InputError(
                "max_tokens",
                f"the prompt's {len(ids)} tokens and {room} to generate are over the run's model.max_length "
                f"({self.cfg.model.max_length} tokens)",
                fix="send a shorter prompt or a smaller max_tokens",
            )
        eos_ids, pad_id = special_ids(self.model, self.tokenizer)
        stops = StoppingCriteriaList([_StopOnText(self.tokenizer, len(ids), stop, set())])
        with inference_mode(self.model) as device:
            input_ids = torch.tensor([ids], device=device)
            inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
            output = _greedy(self.model, inputs, room, eos_ids, pad_id, LogitsProcessorList(), stops)
        new = output[0, len(ids) :].tolist()
        end = next((k for k, i in enumerate(new) if i in eos_ids), None)
        text = decode(self.tokenizer, new[:end])
        cut = min((text.index(s) for s in stop if s and s in text), default=None)
        if cut is not None:
            return text[:cut], "stop"
        return text, "length" if end is None else "stop"

    def usage(self, prompt: str, completion: str) -> dict[str, int]:
        """OpenAI's token counts: the prompt's tokens as generation sees them, the completion's as training
        appends an answer (no special tokens)."""
        from jsquad_lora.encoding.tokens import answer_ids, prompt_ids

        counts = len(prompt_ids(self.tokenizer, prompt)), len(answer_ids(self.tokenizer, completion))
        return {"prompt_tokens": counts[0], "completion_tokens": counts[1], "total_tokens": sum(counts)}


def _with_tuned_threshold(run_dir: Path, cfg: RunConfig) -> RunConfig:
    """`cfg` with the abstention threshold the run tuned on held-out training questions (metrics.json's
    "abstention", written with train.abstain_holdout), where it has one."""
    import dataclasses
    import json

    try:
        tuned = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("abstention")
    except (OSError, ValueError, AttributeError):
        return cfg
    threshold = tuned.get("threshold") if isinstance(tuned, dict) else None
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        return cfg
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, abstain_threshold=float(threshold)))


def load_run_model(run_dir: Path) -> LoadedRun:
    """A finished run, checked and loaded once, generating in `model.dtype`. Not in the evaluation's
    `eval.dtype`: in bfloat16 a batch's answers can differ from the same prompts' answers alone (measured on
    Gemma 3 270M: 2 of 24 in batches of 4), and `serve` promises the answer a question gets alone."""
    run_dir = Path(run_dir)
    cfg = _with_tuned_threshold(run_dir, check_run(run_dir))
    model, tokenizer = load_model(run_dir, cfg)
    return LoadedRun(run_dir, cfg, model, tokenizer, make_renderer(cfg, tokenizer, ()))
