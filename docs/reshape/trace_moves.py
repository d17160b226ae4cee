"""Follow one evaluation and one training step as data: the module-to-module moves of the tool's own code.

    PYTHONPATH=TREE/src .venv/bin/python docs/reshape/trace_moves.py OUT.json   # TREE: a checkout before/after issue 20

Runs the tiny model's `prepare`, then traces `evaluate_stage(job, "before")` (8 dev questions) and
`train_stage(job)` (one optimizer step) with `sys.setprofile`. The current module is the innermost frame of
jsquad_lora's own code; a move is a change of it: a call into another module, or a return to the caller's
(module bodies run by a first, lazy import are left out: they are not the data's path).
Counted per trace: the modules visited; `moves`, the transitions of the path with every repetition of a loop
(the same questions or rows one after another) counted once; the distinct calls from one module into another
(`calls`), those that go up (into a module of a later stage than the caller's: the layers of
tests/test_import_contract.py; a flat module before issue 20 counts in the layer its code moved to), and
`returns`: moves back into a module the path had already left (its first visit earlier than the module left).
A look-up in a registry (registry.py, the bottom layer) is two moves; they are also counted without it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_import_contract import LAYERS  # noqa: E402  (the contract's layers, one definition)

#: the flat modules before issue 20 → the subpackage their code moved to (run.py's recipe part: recipe)
FLAT = {
    "files": "util", "jsonio": "util", "devices": "util", "distributed": "util", "mecab": "util",
    "config": "config", "data": "data", "sampling": "data", "augment": "data", "prompts": "prompts",
    "tokenize": "encoding", "packing": "encoding", "collators": "encoding", "modeling": "model",
    "dropout": "model", "sentencepiece_tokenizer": "model", "training": "train", "decoding": "generate",
    "vocab": "generate", "extractive": "generate", "prefix_cache": "generate", "screened_head": "generate",
    "generation": "generate", "scoring": "evaluate", "predictions": "evaluate", "evaluation": "evaluate",
    "vllm_backend": "evaluate", "report": "report", "question_browser": "report", "ask": "tuned",
    "export": "tuned", "serve": "tuned", "rundir": "recipe", "run": "recipe",
}  # fmt: skip


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    top = FLAT.get(top, top) if module.count(".") == 1 else top
    return next(i for i, names in enumerate(LAYERS) if top in names)


def trace(function, *args) -> tuple[list[str], set[tuple[str, str]]]:
    """The modules of jsquad_lora's code that run during `function(*args)`, one entry per move, and the
    distinct (caller's module, callee's module) calls between two modules."""
    stack: list[str] = []
    path = [function.__module__]
    calls: set[tuple[str, str]] = set()

    importing = []  # module bodies being run by a (lazy) import: not the data's path, skipped

    def profile(frame, event, arg):
        name = frame.f_globals.get("__name__", "")
        if not name.startswith("jsquad_lora") or event not in ("call", "return"):
            return
        if frame.f_code.co_name == "<module>":
            importing.append(frame) if event == "call" else importing.pop()
            return
        if importing:
            return
        if event == "call":
            caller = stack[-1] if stack else function.__module__
            if caller != name:
                calls.add((caller, name))
            stack.append(name)
        else:
            stack.pop()
        current = stack[-1] if stack else function.__module__
        if current != path[-1]:
            path.append(current)

    sys.setprofile(profile)
    try:
        function(*args)
    finally:
        sys.setprofile(None)
    return path, calls


def collapsed(path: list[str]) -> list[str]:
    """`path` with every immediately repeated run of modules kept once (a → b → a → b → a: a → b → a)."""
    out: list[str] = []
    for module in path:
        out.append(module)
        for width in range(1, len(out) // 2 + 1):
            if out[-width:] == out[-2 * width : -width]:
                del out[-width:]
                break
    return out


def summary(traced: tuple[list[str], set[tuple[str, str]]]) -> dict:
    path, calls = traced
    path = collapsed(path)
    first = {m: i for i, m in reversed(list(enumerate(path)))}
    moves = list(zip(path, path[1:]))
    lookups_out = collapsed([m for m in path if m != "jsquad_lora.registry"])
    return {
        "modules": len(set(path)),
        "moves": len(moves),
        "moves without registry lookups": len(lookups_out) - 1,
        "returns": sum(first[b] < first[a] for a, b in moves),
        "calls": len(calls),
        "upward calls": sorted(f"{a} → {b}" for a, b in calls if layer(b) > layer(a)),
        "path": " → ".join(m.removeprefix("jsquad_lora.") for m in path),
    }


def main() -> None:
    try:  # after issue 20
        from jsquad_lora.config.load import load_config
        from jsquad_lora.recipe.job import evaluate_stage, prepare, train_stage
    except ImportError:  # the flat package before it
        from jsquad_lora.config import load_config
        from jsquad_lora.run import evaluate_stage, prepare, train_stage

    os.environ.setdefault("JSQUAD_DIR", str(Path(__file__).resolve().parents[3] / "shared" / "jsquad"))
    overrides = [
        "data.train_limit=16",
        "data.eval_limit=8",
        "train.epochs=1",
        "train.batch_size=64",  # every row in one batch: one optimizer step
        "train.synthetic_per_passage=0",
        "eval.side_check=false",
    ]
    cfg = load_config("tiny-cpu", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        job = prepare(cfg, Path(tmp), evaluating=True)
        result = {"evaluation": summary(trace(evaluate_stage, job, "before"))}
        result["training step"] = summary(trace(train_stage, job))
        result["training step"]["steps"] = job.metrics["train"]["steps"]
    Path(sys.argv[1]).write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
