"""`jsquad-lora ask`: one question about one passage answered with a finished run (or, with a task=question run,
the question written for one answer); the checks of a user's passage and question text (also `serve`'s)."""

from __future__ import annotations

from pathlib import Path

from jsquad_lora.errors import InputError
from jsquad_lora.tuned.loaded import answer_object, check_run, load_run_model

MAX_ASK_CONTEXT_CHARS = 20_000
MAX_ASK_QUESTION_CHARS = 2_000


def _check_text(text: str, option: str) -> None:
    """Refuse command-line text that is not UTF-8: Python keeps each byte that is not as a lone
    surrogate (U+DC80..U+DCFF), which would crash the tokenizer or the output."""
    from jsquad_lora.util.jsonio import lone_surrogate

    if (found := lone_surrogate(text)) is None:
        return
    bad = next(c for c in text if "\ud800" <= c <= "\udfff")
    problem = (
        f"not UTF-8 text: the byte 0x{ord(bad) - 0xDC00:02x} at character {text.index(bad)} is not part of "
        "a UTF-8 character"
        if "\udc80" <= bad <= "\udcff"
        else f"not valid text: it holds {found}"
    )
    raise InputError(
        option,
        problem,
        fix="pass the text in UTF-8 (convert it first, e.g. `iconv -f SHIFT_JIS -t UTF-8`, or set a UTF-8 locale)",
    )


def check_question_text(context: str, question: str, names: tuple[str, str] = ("--context", "--question")) -> None:
    """Refuse a passage or question (or, for a task=question run, answer) that is not UTF-8, too long or empty;
    `names` are what the user called them (command-line options, or the fields of a `serve` request)."""
    _check_text(context, names[0])
    _check_text(question, names[1])
    both = "/".join(names)
    noun = names[1].lstrip("-")  # question, or answer
    if len(context) > MAX_ASK_CONTEXT_CHARS or len(question) > MAX_ASK_QUESTION_CHARS:
        raise InputError(
            both,
            f"input too long ({len(context)} / {len(question)} characters; limits "
            f"{MAX_ASK_CONTEXT_CHARS} / {MAX_ASK_QUESTION_CHARS})",
            fix=f"pass a shorter passage or {noun}",
        )
    if not context.strip() or not question.strip():
        article = "an" if noun[:1] in "aeiou" else "a"
        raise InputError(both, f"empty passage or {noun}", fix=f"pass both a passage and {article} {noun}")


#: per task: what a run does, the option it takes, and where to go for the other task
TASK_USE = {
    "answer": ("answers a question", "question", "to write a question for an answer, use a task=question run"),
    "question": ("writes a question for an answer", "answer", "to answer a question, use a task=answer run"),
}


def check_task(run_dir: Path, task: str) -> None:
    """Refuse, before any model is loaded, a run whose task is not `task`: what `ask` was given (--question or
    --answer) is not what the run takes."""
    cfg = check_run(run_dir)
    if cfg.task == task:
        return
    does, takes, other = TASK_USE[cfg.task]
    given = TASK_USE[task][1]
    raise InputError(
        run_dir,
        f"a task={cfg.task} run {does}: it takes --{takes}, not --{given}",
        where=f"--{given}",
        fix=f"pass --context TEXT --{takes} TEXT ({other})",
    )


def ask(run_dir: Path, context: str, question: str, decoding: str | None = None) -> dict:
    """Answer one question about one passage (of any length up to MAX_ASK_CONTEXT_CHARS: a long one is read in
    windows) with a finished run's model and adapter: `answer_object`'s fields.
    Every problem with the text (too long, empty, not UTF-8) or the run directory (no config.yaml, no
    trained model, a damaged one) is an InputError naming it."""
    check_question_text(context, question)
    check_task(run_dir, "answer")
    run = load_run_model(run_dir)
    windows = run.windows(context, question)
    return answer_object(context, windows, run.answer_windows(windows, decoding))


def write_question(run_dir: Path, context: str, answer: str, decoding: str | None = None) -> dict:
    """A task=question run's greedy question whose answer is `answer` in `context` (one prompt's passage):
    {"question", "task"}. Problems with the text, the run, or a passage too long for one prompt are InputErrors."""
    check_question_text(context, answer, ("--context", "--answer"))
    check_task(run_dir, "question")
    if decoding not in (None, "greedy"):
        raise InputError(
            "--decoding",
            f"a task=question run writes its question greedily, not in {decoding} decoding (a question is not a "
            "span of the passage)",
            fix="leave --decoding out",
        )
    run = load_run_model(run_dir)
    prompt = run.question_prompt(context, answer, "--context")
    return {"question": run.write_questions([prompt], [context])[0], "task": run.cfg.task}
