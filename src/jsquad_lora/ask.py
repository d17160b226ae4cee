"""One question about one passage, answered with a finished run's model and adapter."""

from __future__ import annotations

from pathlib import Path

from .config import load_config
from .data import Question
from .errors import InputError
from .run import base_model_and_tokenizer, decoding_config, make_renderer

MAX_ASK_CONTEXT_CHARS = 20_000
MAX_ASK_QUESTION_CHARS = 2_000
#: what a run's adapter/ holds: a LoRA adapter, or the full weights when lora.enabled=false
ADAPTER_FILES = {
    True: ("adapter_config.json", "adapter_model.safetensors"),
    False: ("config.json", "model.safetensors"),
}
#: what a tiny run's base/ holds: the initial model and its character tokenizer
TINY_BASE_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def _check_text(text: str, option: str) -> None:
    """Refuse command-line text that is not UTF-8: Python keeps each byte that is not as a lone
    surrogate (U+DC80..U+DCFF), which would crash the tokenizer or the output."""
    from .data import lone_surrogate

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


def _missing(directory: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not (directory / name).is_file()]


def _check_run_dir(run_dir: Path, cfg) -> None:
    """The trained model a run directory must hold for `ask`, named file by file when missing."""
    from .modeling import TINY

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
    base = run_dir / "base"
    if cfg.model.name == TINY and (missing := _missing(base, TINY_BASE_FILES)):
        raise InputError(
            base,
            f"the tiny run's base model is missing ({', '.join(missing)} not found)",
            fix="a tiny run keeps its base model in base/; copy the whole run directory, or run it again "
            f"(jsquad-lora run --overwrite --output {run_dir})",
        )


def ask(run_dir: Path, context: str, question: str, decoding: str | None = None) -> str:
    """Answer one question about one passage with a finished run's model and adapter.
    Every problem with the text (too long, empty, not UTF-8) or the run directory (no config.yaml, no
    trained model, a damaged one) is an InputError naming it."""
    _check_text(context, "--context")
    _check_text(question, "--question")
    if len(context) > MAX_ASK_CONTEXT_CHARS or len(question) > MAX_ASK_QUESTION_CHARS:
        raise InputError(
            "--context/--question",
            f"input too long ({len(context)} / {len(question)} characters; limits "
            f"{MAX_ASK_CONTEXT_CHARS} / {MAX_ASK_QUESTION_CHARS})",
            fix="pass a shorter passage or question",
        )
    if not context.strip() or not question.strip():
        raise InputError("--context/--question", "empty passage or question", fix="pass both a passage and a question")
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

    from safetensors import SafetensorError

    from .evaluation import build_prompts
    from .generation import generate_answers
    from .modeling import load_trained

    try:
        model, tokenizer = base_model_and_tokenizer(cfg, run_dir, ())
        model = load_trained(model, run_dir / "adapter", cfg.lora.enabled)
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise InputError(
            run_dir,
            f"the run's model could not be loaded ({(str(err).strip().splitlines() or [type(err).__name__])[0][:300]})",
            fix="its files are damaged or from another version: copy the run directory again, or re-run it "
            f"(jsquad-lora run --overwrite --output {run_dir})",
        ) from None
    q = Question("ask", "", context, question, ("",), (0,))
    render = make_renderer(cfg, tokenizer, ())
    prompts, passages, _ = build_prompts([q], render, tokenizer, cfg.model.max_length - cfg.eval.max_new_tokens)
    return generate_answers(model, tokenizer, prompts, passages, decoding_config(cfg, decoding))[0]
