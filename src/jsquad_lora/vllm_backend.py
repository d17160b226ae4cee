"""Optional vLLM evaluation backend (`eval.backend: vllm`, extra `[vllm]`, CUDA only).

Same contract as `generation.generate_answers` in greedy mode: the prompt token ids are the ones
training saw (`tokenize.prompt_ids`, passed to vLLM as token ids, so vLLM's own tokenisation
cannot differ), decoding is greedy (temperature 0), and the answer is cut from the generated ids
by the very function the HF backend uses (`generation.cut_answer`). A LoRA adapter is served
through vLLM's `LoRARequest` (the architecture must support LoRA in vLLM); full fine-tuning
results are loaded as a model. Decoding modes name the backends that implement them
(`decoding.DECODING_MODES`); extractive decoding needs a per-row logits processor over the passage
and stays on the HF backend. Engines live in a `VllmEngines`, which the job closes when it ends.

Numerics differ from HF (vLLM's kernels, bf16 accumulation order), so a few greedy answers can
differ; `benchmarks/check_vllm.py` measures the agreement on a sample of dev questions.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable, Sequence

from .decoding import DecodingConfig, decoding_mode
from .errors import InputError
from .generation import cut_answer, end_token_ids
from .tokenize import prompt_ids

#: vLLM shares the GPU with the HF model the run keeps for training: take half, not vLLM's 90 %
GPU_MEMORY_UTILIZATION = 0.5
_BACKEND_NAMES = {"hf": "HF", "vllm": "vLLM"}
#: answers are saved (and resumable) after every chunk of this many prompts
CHUNK = 512


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


class VllmGenerator:
    """One vLLM engine for a run: `model_path` is the base model (hub id or local path, or the
    full fine-tuned weights); `adapter_dir`, when given, a PEFT LoRA adapter applied per request."""

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


class VllmEngines:
    """The vLLM engines of one job, one per model path, released when the job ends:
    `with VllmEngines() as engines: engines.get(path, ...)`."""

    def __init__(self) -> None:
        self._engines: dict[str, VllmGenerator] = {}

    def get(self, model_path: str | Path, tokenizer, **settings) -> VllmGenerator:
        """The engine serving `model_path`, started on first use (`settings`: VllmGenerator's)."""
        key = str(model_path)
        if key not in self._engines:
            self._engines[key] = VllmGenerator(model_path, tokenizer, **settings)
        return self._engines[key]

    def close(self) -> None:
        if not self._engines:
            return
        self._engines.clear()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> VllmEngines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
