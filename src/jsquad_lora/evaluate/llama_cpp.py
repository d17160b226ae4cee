"""The llama.cpp evaluation backend (`eval.backend=llama_cpp`): a GGUF file answers the run's questions
through llama-cpp-python, so that a user sees the EM of the file they ship (`export --format gguf`).

    jsquad-lora evaluate --output runs/gguf-f16 model.gguf_file=EXPORT/NAME-f16.gguf \
        eval.backend=llama_cpp eval.decoding=greedy

The model is `model.gguf_file` itself, evaluated as the "before" stage (there is no adapter: an export is
the merged model). Prompts are this tool's token ids (the run's tokenizer), decoded greedily (top_k 1)
by llama.cpp and cut at the end tokens and stop strings exactly as the HF backend cuts them; the answers
are scored by the same scorers. Greedy decoding only: the extractive modes need this tool's logits
processor. llama-cpp-python has no wheels here: `pip install -e '.[llamacpp]'` builds it from source.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Sequence

from jsquad_lora.config.schema import RunConfig
from jsquad_lora.errors import InputError
from jsquad_lora.evaluate.backends import EvalBackend

log = logging.getLogger(__name__)
NAME = "eval.backend=llama_cpp"


def check(mode_name: str) -> None:
    """A clear error, before any work, where llama.cpp cannot evaluate."""
    if mode_name != "greedy":
        raise InputError(
            NAME,
            f"{mode_name} decoding is this tool's own (a logits processor llama.cpp does not run)",
            fix="use eval.decoding=greedy with llama.cpp, or eval.backend=hf",
        )
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise InputError(
            NAME,
            "llama-cpp-python is not installed",
            fix="pip install -e '.[llamacpp]' (builds llama.cpp from source: cmake and a C++ compiler, ~15 min on 2 "
            "cores), or use eval.backend=hf",
        ) from None


def answerer(cfg: RunConfig, run_dir: Path, model, tokenizer, adapter: Path | None, engines):
    """`generator(prompts, decoding, on_batch)` answering with llama.cpp from `model.gguf_file`."""
    from jsquad_lora.generate.greedy import cut_answer, end_token_ids

    if adapter is not None or not cfg.model.gguf_file:
        raise InputError(
            NAME,
            "llama.cpp evaluates a GGUF file (model.gguf_file), not a run's adapter",
            fix="export the run (jsquad-lora export RUN --format gguf --output DIR) and evaluate that file: "
            "jsquad-lora evaluate --output NEW model.gguf_file=DIR/FILE.gguf eval.backend=llama_cpp "
            "eval.decoding=greedy",
        )
    from jsquad_lora.encoding.tokens import prompt_ids
    from jsquad_lora.model.sources.gguf_file import gguf_path

    path = gguf_path(cfg.model)

    def generate(prompts: Sequence[str], decoding, on_batch) -> list[str]:
        from llama_cpp import Llama

        _, _, end_ids = end_token_ids(model, tokenizer, decoding.stop_strings)
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        with _without_amx_repacking():
            llm = Llama(str(path), n_ctx=cfg.model.max_length, n_threads=threads, n_batch=512, verbose=False, seed=0)
        log.info("llama.cpp answers with %s (%d threads)", path, threads)
        answers = []
        try:
            for index, prompt in enumerate(prompts):
                ids: list[int] = []
                for token in llm.generate(prompt_ids(tokenizer, prompt), top_k=1, temp=0.0, repeat_penalty=1.0):
                    if token in end_ids:
                        break
                    ids.append(token)
                    if len(ids) >= decoding.max_new_tokens:
                        break
                answers.append(cut_answer(tokenizer, ids, end_ids, decoding.stop_strings))
                if on_batch is not None:
                    on_batch([index], answers[-1:])
        finally:
            with contextlib.suppress(Exception):
                llm.close()
        return answers

    return generate


@contextlib.contextmanager
def _without_amx_repacking():
    """Model loading without llama.cpp's "extra buffer types" on a CPU with AMX: its AMX kernels (used for the
    q8_0 / q4 weight types) died with SIGILL on a `tilezero` in an OpenMP worker on the Xeon this was built on,
    while torch's AMX runs there. llama-cpp-python sets the model parameters from
    `llama_model_default_params()`, so that function is wrapped while the model loads."""
    from jsquad_lora.util.devices import cpu_flags

    if "amx_bf16" not in cpu_flags():  # util.devices names AMX by its bf16 flag
        yield
        return
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        lib.llama_model_default_params = default


BACKEND = EvalBackend(
    "llama_cpp",
    "llama.cpp (llama-cpp-python) on model.gguf_file, greedy: the EM of an exported GGUF",
    check,
    answerer,
    single_process=("llama.cpp runs in one process", "run it without torchrun / accelerate launch"),
)
