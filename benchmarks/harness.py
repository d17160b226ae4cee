"""What every benchmark records the same way: machine, versions, peak memory, timing, and one result
schema (benchmarks/README.md), written to benchmarks/results/<name>.json, $JSQUAD_BENCH_RESULTS/<name>.json
(smoke runs) or a script's --out. Scripts in benchmarks/ `import harness`; peers/ and probes/ put
benchmarks/ on sys.path first.

    {"benchmark", "command", "machine", "versions", "started", "finished", "seconds", "peak_memory",
     ...the benchmark's own keys..., "rows": [one dict per measured row]}
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: the packages every result names (None: not installed), then a benchmark's own (`packages=`)
PACKAGES = ("jsquad-lora", "torch", "transformers", "peft", "datasets", "accelerate", "trl", "lm_eval")
#: environment variables that change what a run measures: named in the command line where set
ENV = ("JSQUAD_DIR", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
STARTED = datetime.datetime.now().astimezone()  # the script's start: it imports the harness first


def machine() -> dict:
    """CPU name and vector features (jsquad_lora.util.devices), cores, threads, RAM, GPU."""
    import torch

    from jsquad_lora.util.devices import cpu_flags, cpu_name, usable_isa

    flags = cpu_flags()
    gpu = torch.cuda.is_available()
    return {
        "cpu": cpu_name(),
        "cpu_flags": flags,
        **{name: name in flags for name in ("amx_bf16", "avx512_bf16", "avx2")},
        "isa_used": usable_isa(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "gpu_count": torch.cuda.device_count() if gpu else 0,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
    }


def describe() -> str:
    """machine() and the torch version in one line, for a printed header."""
    m = machine()
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ", no GPU"
    return (
        f"CPU: {m['cpu']} ({', '.join(m['cpu_flags']) or 'no bf16 flags'}; torch uses {m['isa_used']}), "
        f"{m['cores']} cores, {m['threads']} threads, {m['ram_gib']} GiB{gpu}; torch {_version('torch')}"
    )


def versions(*packages: str) -> dict:
    """Python, PACKAGES and `packages` (None where not installed), the working tree's git commit."""
    found: dict[str, Any] = {"python": platform.python_version()}
    found.update({name: _version(name) for name in (*PACKAGES, *packages)})
    found["git_commit"] = (_git("rev-parse", "HEAD") or "").strip() or None
    status = _git("status", "--porcelain", "--untracked-files=no")
    found["git_dirty"] = None if status is None else bool(status.strip())
    return found


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def peak_memory() -> dict:
    """MiB: peak RSS of this process (ru_maxrss), of its waited-for children if any (Linux counts a child's
    RSS at fork, i.e. at least the parent's then), CUDA's peak allocated memory if torch used CUDA."""
    found = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if children:
        found["children_peak_rss_mib"] = children / 1024
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        found["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return found


class Timer:
    """`with Timer() as t: ...` then `t.seconds` (time.perf_counter); `sync` runs before the start and
    before the stop (torch.cuda.synchronize for GPU work)."""

    def __init__(self, sync: Callable[[], Any] | None = None):
        self.sync, self.start, self.seconds = sync, 0.0, 0.0

    def __enter__(self) -> Timer:
        if self.sync:
            self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.sync:
            self.sync()
        self.seconds = time.perf_counter() - self.start


def command() -> str:
    """The shell line that ran this process: the environment that matters, the interpreter, argv."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ENV if k in os.environ]
    argv = [_relative(sys.executable), _relative(sys.argv[0]), *sys.argv[1:]]
    return " ".join([*env, shlex.join(argv)])


def _relative(path: str) -> str:
    absolute = Path(os.path.abspath(path))  # not resolved: a venv's python is a link
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def write_result(name: str, rows: list[dict], *, out=None, packages: tuple[str, ...] = (), **extra) -> Path:
    """The result of benchmark `name` in the one schema (module docstring), written atomically to `out`
    or results_dir()/<name>.json; `extra` holds the benchmark's own keys, `packages` more versions."""
    finished, memory = datetime.datetime.now().astimezone(), peak_memory()  # before versions() runs git
    record = {
        "benchmark": name,
        "command": command(),
        "machine": machine(),
        "versions": versions(*packages),
        "started": STARTED.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "seconds": (finished - STARTED).total_seconds(),
        "peak_memory": memory,
    }
    clash = (record.keys() | {"rows"}) & extra.keys()
    if clash:
        raise ValueError(f"keys of the common schema given as extra keys: {sorted(clash)}")
    record.update(extra, rows=rows)
    path = Path(out) if out else Path(os.environ.get("JSQUAD_BENCH_RESULTS") or RESULTS) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(json.dumps(record, indent=1, ensure_ascii=False, default=str) + "\n")
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)
    print(f"wrote {path}")
    return path


def print_table(rows: list[dict], columns: list[tuple]) -> None:
    """A markdown table: each column (header, key or function of the row[, format spec]); None prints empty."""
    print("| " + " | ".join(c[0] for c in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(_cell(row, *c[1:]) for c in columns) + " |")


def _cell(row: dict, get, spec: str = "") -> str:
    value = get(row) if callable(get) else row.get(get)
    if value is None:
        return ""
    return format(value, spec or (".2f" if isinstance(value, float) else ""))
