"""Optional vLLM evaluation backend (`eval.backend: vllm`, extra `[vllm]`, CUDA only; `BACKEND` is its registry entry).

Same contract as `generate.greedy.generate_answers` in greedy mode: the prompt token ids are the ones
training saw (`encoding.tokens.prompt_ids`, passed to vLLM as token ids, so vLLM's own tokenisation
cannot differ), decoding is greedy (temperature 0), and the answer is cut from the generated ids
by the very function the HF backend uses (`generate.greedy.cut_answer`). Decoding modes name the
backends that implement them (`registry.DECODING_MODES`); extractive decoding needs a per-row
logits processor over the passage and stays on the HF backend.

What vLLM serves (`serving`): before tuning, the base model; a run that fine-tuned every weight,
its saved weights; a LoRA run, the base with the adapter applied per request (`LoRARequest`)
where vLLM's implementation of the architecture supports LoRA, else the adapter merged into the
base weights by peft (`model.lora.save_merged`) in a temporary safetensors model directory
(`RUN/.vllm-merged`, removed with its engine): vLLM's GPT-NeoX (rinna) has no LoRA support.

One engine at a time: an evaluation starts its engine when it has questions to answer and
releases it (engine shut down, GPU memory returned) when its answers are in, so the engine of the
"before" evaluation is gone before training and before the "after" engine starts.

Numerics differ from HF (vLLM's kernels, accumulation order), so a few greedy answers can differ;
`benchmarks/check_vllm.py` measures the agreement at the same precision on both sides.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

from jsquad_lora.config.schema import LoraSettings, RunConfig
from jsquad_lora.encoding.tokens import prompt_ids
from jsquad_lora.errors import InputError
from jsquad_lora.evaluate.backends import EvalBackend
from jsquad_lora.generate.decoding import DecodingConfig, decoding_mode
from jsquad_lora.generate.greedy import cut_answer, end_token_ids

log = logging.getLogger(__name__)
#: vLLM shares the GPU with the HF model the run keeps for training: take half, not vLLM's 90 %
GPU_MEMORY_UTILIZATION = 0.5
_BACKEND_NAMES = {"hf": "HF", "vllm": "vLLM", "llama_cpp": "llama.cpp"}
#: answers are saved (and resumable) after every chunk of this many prompts
CHUNK = 512
#: architectures whose vLLM implementation applies LoRA adapters (vLLM's supported-models table, its
#: LoRA column); any other architecture (GPT-NeoX: rinna) is served the adapter merged into its weights
VLLM_LORA_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Phi3ForCausalLM",
    }
)
#: the temporary merged model of a run, removed when its engine is released
MERGED_DIR = ".vllm-merged"


def check_available(mode_name: str) -> None:
    """A clear error, before any work, when the vLLM backend cannot run here."""
    mode = decoding_mode(mode_name)
    if "vllm" not in mode.backends:
        backends = " and ".join(_BACKEND_NAMES.get(b, b) for b in mode.backends)
        raise InputError(
            "eval.backend=vllm",
            f"{mode.name} decoding is only implemented on the {backends} backend",
            fix="use eval.decoding=greedy with vLLM, or eval.backend=hf",
        )
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise InputError(
            "eval.backend=vllm",
            "vLLM is not installed",
            fix="pip install -e '.[vllm]' on a CUDA machine, or use eval.backend=hf",
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise InputError(
            "eval.backend=vllm", "vLLM needs a CUDA GPU and none is visible", fix="use eval.backend=hf on this machine"
        )


@dataclass(frozen=True)
class Serving:
    """The model directory vLLM loads ("base", the run's full fine-tuned "weights", or the "merged"
    base + adapter) and whether the adapter is applied per request (LoRARequest)."""

    model: Literal["base", "weights", "merged"]
    lora_request: bool = False


def serving(architecture: str, lora: LoraSettings, trained: bool) -> Serving:
    """What vLLM serves for a model of `architecture` (config.json's `architectures[0]`), before
    tuning (`trained` False) or after. A LoRA adapter goes per request only where vLLM's
    implementation supports LoRA and the adapter is plain LoRA (no DoRA, no trained biases)."""
    if not trained:
        return Serving("base")
    if not lora.enabled:
        return Serving("weights")
    if architecture in VLLM_LORA_ARCHITECTURES and not lora.use_dora and lora.bias == "none":
        return Serving("base", lora_request=True)
    return Serving("merged")


def architecture_of(model) -> str:
    """The architecture name of an HF model (peft-wrapped or not), as config.json names it."""
    names = getattr(getattr(model, "config", None), "architectures", None)
    if names:
        return names[0]
    from jsquad_lora.model.layers import unwrapped

    return type(unwrapped(model)).__name__


def answerer(cfg: RunConfig, run_dir: Path, model, tokenizer, adapter: Path | None, engines: VllmEngines):
    """The vLLM answer function `generator(prompts, decoding, on_batch)` of `evaluation.evaluate`
    (None: the HF backend). `model` is the HF model (its generation config's EOS ids, its
    architecture); `adapter` the run's adapter/ (None before tuning). The engine starts when the
    function is called and is released when it returns."""
    if cfg.eval.backend != "vllm":
        return None
    plan = serving(architecture_of(model), cfg.lora, trained=adapter is not None)

    def generate(prompts: Sequence[str], decoding: DecodingConfig, on_batch) -> list[str]:
        try:
            path = _served_path(cfg, run_dir, tokenizer, adapter, plan, engines)
            log.info("vLLM serves %s%s", path, f" with the LoRA adapter {adapter}" if plan.lora_request else "")
            engine = engines.get(
                path,
                tokenizer,
                dtype=cfg.model.dtype,
                max_length=cfg.model.max_length,
                lora_rank=cfg.lora.r if plan.lora_request else None,
                trust_remote_code=cfg.model.trust_remote_code,
            )
            return engine.generate(model, prompts, decoding, adapter if plan.lora_request else None, on_batch)
        finally:
            engines.close()  # one engine at a time: gone before training and before the next evaluation's

    return generate


def _served_path(cfg: RunConfig, run_dir: Path, tokenizer, adapter: Path | None, plan: Serving, engines) -> str:
    from jsquad_lora.model.lora import save_merged
    from jsquad_lora.model.source import run_base_source

    if plan.model == "weights":
        return str(adapter)
    if plan.model == "base":
        return run_base_source(cfg.model, run_dir)

    target = run_dir / MERGED_DIR
    engines.remove_on_close(target)
    log.info("merging the adapter into the base weights for vLLM (%s, %s): %s", cfg.model.dtype, adapter, target)
    return str(save_merged(cfg.model, run_base_source(cfg.model, run_dir), adapter, target, tokenizer))


class VllmGenerator:
    """One vLLM engine: `model_path` is the model directory (or hub id) it serves; with `lora_rank`,
    LoRA adapters (of at most that rank) can be applied per request."""

    def __init__(
        self,
        model_path: str | Path,
        tokenizer,
        *,
        dtype: str,
        max_length: int,
        lora_rank: int | None,
        trust_remote_code: bool = False,
    ) -> None:
        from vllm import LLM

        self.tokenizer = tokenizer
        self.llm = LLM(
            model=str(model_path),
            tokenizer=str(model_path),
            dtype=dtype,
            max_model_len=max_length,
            trust_remote_code=trust_remote_code,
            gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
            enable_lora=lora_rank is not None,
            max_lora_rank=max(8, lora_rank or 8),
            seed=0,
        )

    def generate(
        self,
        model,
        prompts: Sequence[str],
        config: DecodingConfig,
        adapter_dir: Path | None = None,
        on_batch: Callable[[list[int], list[str]], None] | None = None,
    ) -> list[str]:
        """One answer per prompt, in input order. `model` is the HF model (its generation config's EOS ids)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        _, _, end_ids = end_token_ids(model, self.tokenizer, config.stop_strings)
        params = SamplingParams(
            temperature=0.0,
            max_tokens=config.max_new_tokens,
            stop_token_ids=sorted(end_ids),
            stop=[s for s in config.stop_strings if s],
            skip_special_tokens=True,
        )
        trim = decoding_mode(config.mode).trims_partial_character
        lora = LoRARequest("adapter", 1, str(adapter_dir)) if adapter_dir is not None else None
        answers: list[str] = []
        for start in range(0, len(prompts), CHUNK):
            chunk = list(range(start, min(start + CHUNK, len(prompts))))
            requests = [{"prompt_token_ids": prompt_ids(self.tokenizer, prompts[i])} for i in chunk]
            outputs = self.llm.generate(requests, params, lora_request=lora, use_tqdm=False)
            chunk_answers = [
                cut_answer(self.tokenizer, list(o.outputs[0].token_ids), end_ids, config.stop_strings, trim)
                for o in outputs
            ]
            answers += chunk_answers
            if on_batch is not None:
                on_batch(chunk, chunk_answers)
        return answers

    def shutdown(self) -> None:
        """Stop the engine (its worker process) so that its GPU memory can be returned."""
        llm, self.llm = self.llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        for stop in (getattr(llm, "shutdown", None), getattr(core, "shutdown", None)):
            if callable(stop):  # LLM.shutdown in newer vLLM; the V1 engine core's before
                with contextlib.suppress(Exception):
                    stop()
                break


class VllmEngines:
    """The vLLM engine of one job, at most one at a time, released when the job ends:
    `with VllmEngines() as engines: engines.get(path, ...)`."""

    def __init__(self) -> None:
        self._engines: dict[tuple, VllmGenerator] = {}
        self._temporary: list[Path] = []

    def get(self, model_path: str | Path, tokenizer, **settings) -> VllmGenerator:
        """The engine serving `model_path` with `settings` (VllmGenerator's), started on first use;
        an engine serving anything else is released first."""
        key = (str(model_path), tuple(sorted(settings.items())))
        if key not in self._engines:
            self._release_engines()
            self._engines[key] = VllmGenerator(model_path, tokenizer, **settings)
        return self._engines[key]

    def remove_on_close(self, path: Path) -> None:
        """`path` (a temporary model directory) is deleted when the engines are released."""
        self._temporary.append(path)

    def close(self) -> None:
        """Every engine shut down, its GPU memory returned, and the temporary model directories deleted."""
        self._release_engines()
        for path in self._temporary:
            shutil.rmtree(path, ignore_errors=True)
        self._temporary.clear()

    def _release_engines(self) -> None:
        if not self._engines:
            return
        for engine in self._engines.values():
            engine.shutdown()
        self._engines.clear()
        gc.collect()
        with contextlib.suppress(Exception):  # vLLM's process groups, where this process holds any
            from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> VllmEngines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


BACKEND = EvalBackend(
    "vllm",
    "vLLM on a CUDA GPU, greedy only; prompts as the same token ids (extra [vllm])",
    check_available,
    answerer,
    VllmEngines,
    single_process=(
        "the vLLM backend runs in one process (it shards a model over GPUs itself)",
        "launch without torchrun for a vLLM evaluation, or use eval.backend=hf",
    ),
)
