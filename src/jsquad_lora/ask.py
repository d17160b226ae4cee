"""One question about one passage, answered with a finished run's model and adapter."""

from __future__ import annotations

from pathlib import Path

from .config import load_config
from .data import Question
from .errors import InputError
from .run import base_model_and_tokenizer, decoding_config, make_renderer

MAX_ASK_CONTEXT_CHARS = 20_000
MAX_ASK_QUESTION_CHARS = 2_000


def ask(run_dir: Path, context: str, question: str, decoding: str | None = None) -> str:
    """Answer one question about one passage with a finished run's model and adapter."""
    from .evaluation import build_prompts
    from .generation import generate_answers
    from .modeling import load_trained

    if len(context) > MAX_ASK_CONTEXT_CHARS or len(question) > MAX_ASK_QUESTION_CHARS:
        raise InputError(
            "--context/--question",
            f"input too long ({len(context)} / {len(question)} characters; limits "
            f"{MAX_ASK_CONTEXT_CHARS} / {MAX_ASK_QUESTION_CHARS})",
            fix="pass a shorter passage or question",
        )
    if not context.strip() or not question.strip():
        raise InputError("--context/--question", "empty passage or question", fix="pass both a passage and a question")
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise InputError(
            run_dir, "not a run directory (no config.yaml)", fix="pass a directory written by `jsquad-lora run`"
        )
    cfg = load_config(config_path)
    model, tokenizer = base_model_and_tokenizer(cfg, run_dir, ())
    if (run_dir / "adapter").exists():
        model = load_trained(model, run_dir / "adapter", cfg.lora.enabled)
    q = Question("ask", "", context, question, ("",), (0,))
    render = make_renderer(cfg, tokenizer, ())
    prompts, passages, _ = build_prompts([q], render, tokenizer, cfg.model.max_length - cfg.eval.max_new_tokens)
    return generate_answers(model, tokenizer, prompts, passages, decoding_config(cfg, decoding))[0]
