"""What the machine can do fast: the CPU's name and its bfloat16 features, read at run time.

Machines of one kind differ: some CPUs have AMX-BF16 (bfloat16 matmuls in tile units), some only
AVX512-BF16 (dot-product instructions), others only AVX2. The defaults
choose bfloat16 only where it was measured faster (BENCHMARKS.md, `bench_cpu_levers.py`).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

#: the vector flags worth naming in a benchmark row, the bfloat16 ones first
NAMED_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags() -> list[str]:
    """The flags of NAMED_FLAGS this CPU has (empty where /proc/cpuinfo is missing)."""
    words = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            words = set(line.split(":", 1)[1].split())
            break
    return [f for f in NAMED_FLAGS if f in words]


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_isa() -> str:
    """The widest vector ISA torch uses here: "AVX512", "AVX2", ... A CPU's flags can be narrowed
    for torch by ATEN_CPU_CAPABILITY and for oneDNN (its matmuls) by ONEDNN_MAX_CPU_ISA, which
    is how an AVX2-only machine is reproduced on a bigger one (BENCHMARKS.md)."""
    import torch

    isa = torch.backends.cpu.get_cpu_capability()
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if limit and not limit.startswith(("AVX512", "AVX10", "ALL")):
        isa = "AVX2" if limit.startswith("AVX2") else "DEFAULT"
    return isa


def fast_cpu_bf16() -> bool:
    """Whether bfloat16 runs faster than float32 on this CPU: with AVX512-BF16 it was measured
    faster (train step and prefill, BENCHMARKS.md §0), and AMX-BF16 has tile units for it; with
    AVX2 alone bfloat16 has no instructions of its own, so float32 stays there."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_flags())) and usable_isa().startswith("AVX512")


def inference_dtype(setting: str, model_dtype: str) -> str:
    """`eval.dtype` resolved for this machine: "auto" → bfloat16 where it is fast, else the model's dtype."""
    import torch

    if setting != "auto":
        return setting
    if model_dtype != "float32":
        return model_dtype
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else model_dtype
    return "bfloat16" if fast_cpu_bf16() else model_dtype


def train_in_bf16(setting: str) -> bool:
    """`train.mixed_precision` resolved for this machine: "auto" → a CUDA GPU with bf16, or a CPU
    where `fast_cpu_bf16`."""
    import torch

    if setting != "auto":
        return setting == "bf16"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return fast_cpu_bf16()
