"""Benchmark: what a run's GGUF exports score and how fast they answer through llama.cpp, beside this tool's
own evaluation of the same merged model on the same questions (greedy decoding both ways).

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_gguf.py --run runs/gemma-3-270m \
        [--quantize f16 q8_0] [--work /tmp/bench-gguf]

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_gguf.py --run runs/qwen-2000 --quantize f16 \
        --llama-cpp llama_cpp_python-0.3.36.tar.gz [--both-writers]

Every step is the command a user runs (printed as it runs): `export --merge` and `evaluate` with the HF
backend, then per quantisation `export --format gguf --quantize Q [--llama-cpp PATH]` and `evaluate` of that file
with `eval.backend=llama_cpp`. Each evaluation uses the run's config (its dev sample: the same question ids).
`--both-writers` (Gemma 3) exports each quantisation twice: with this tool's writer and llama.cpp's converter.
The evaluation feeds llama.cpp this tool's token ids, so a file's EM does not see its vocabulary; the column
"prompts tokenised as the run" does: the share of the first 200 sample prompts that llama.cpp itself turns from
text into the run's token ids (what a user of llama-server or Ollama sends is text).
Needs llama-cpp-python (`pip install -e '.[llamacpp]'`, built from source).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import harness

CLI = [sys.executable, "-m", "jsquad_lora.cli"]
# `evaluate` scores as a run's "before" step: on, whatever the run had (a learning-curve run skips it)
COMMON = ["eval.decoding=greedy", "eval.before=true", "eval.after=false", "eval.side_check=false"]


def run(argv: list[str]) -> None:
    print("$ jsquad-lora " + shlex.join(argv[len(CLI) :]), flush=True)
    subprocess.run(argv, check=True)


def evaluated(directory: Path, run_metrics: dict) -> dict:
    metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    seconds = metrics["eval_before"]["seconds"]
    count = metrics["before"]["jglue"]["count"]
    return {
        "em": metrics["before"]["jglue"]["exact_match"],
        "f1": metrics["before"]["jglue"]["f1"],
        "em_se": (metrics.get("sample") or {}).get("em_standard_error", {}).get("before"),
        "questions": count,
        "seconds": seconds,
        "questions_per_second": count / seconds,
        "run_em": run_metrics["after"]["jglue"]["exact_match"],
    }


def sample_prompts(run_dir: Path, config: str, count: int = 200) -> tuple[object, list[str]]:
    """The run's tokenizer and its first `count` dev-sample prompts, as its evaluation renders them."""
    from jsquad_lora.config.load import load_config
    from jsquad_lora.data.jglue import resolve_split
    from jsquad_lora.data.jsquad import load_split
    from jsquad_lora.evaluate.loop import build_prompts
    from jsquad_lora.model.load import load_tokenizer
    from jsquad_lora.prompts.fewshot import make_renderer

    cfg = load_config(config)
    tokenizer = load_tokenizer(str(run_dir / "adapter"))
    wanted = set(json.loads((run_dir / "eval_ids.json").read_text(encoding="utf-8"))[:count])
    questions = [q for q in load_split(resolve_split(cfg.data.dir, cfg.data.eval_split)).questions if q.id in wanted]
    budget = cfg.model.max_length - cfg.eval.max_new_tokens
    prompts, _, _ = build_prompts(questions, make_renderer(cfg, tokenizer, ()), tokenizer, budget)
    return tokenizer, prompts


def tokenised_as_run(gguf: Path, tokenizer, prompts: list[str]) -> float:
    """The share of `prompts` that llama.cpp, reading `gguf`'s vocabulary, tokenises into the run's ids."""
    import llama_cpp

    from jsquad_lora.encoding.tokens import prompt_ids

    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    bos = tokenizer.bos_token
    # a prompt that writes its own BOS (a chat template's) is tokenised without another one, as prompt_ids does
    same = sum(
        llm.tokenize(p.encode("utf-8"), add_bos=not (bos and p.startswith(bos)), special=True)
        == prompt_ids(tokenizer, p)
        for p in prompts
    )
    return same / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--quantize", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--work", default="/tmp/bench-gguf", help="exports and evaluation directories")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/gguf.json)")
    parser.add_argument("--llama-cpp", help="llama.cpp's converter (export --llama-cpp): every family but Gemma 3")
    parser.add_argument("--both-writers", action="store_true", help="Gemma 3: this tool's writer and the converter")
    args = parser.parse_args()
    run_dir, work = Path(args.run), Path(args.work)
    config = str(run_dir / "config.yaml")
    run_metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    rows = []

    merged = work / "merged"
    run([*CLI, "export", str(run_dir), "--merge", "--overwrite", "--output", str(merged)])
    hf = work / "eval-hf"
    run([*CLI, "evaluate", "--overwrite", "--output", str(hf), "--config", config, f"model.name={merged}"] + COMMON)
    size = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
    rows.append({"variant": "merged safetensors, this tool (hf)", "bytes": size, **evaluated(hf, run_metrics)})

    tokenizer, prompts = sample_prompts(run_dir, config)
    writers = [("this tool's writer", [])] if args.both_writers or not args.llama_cpp else []
    if args.llama_cpp:
        writers.append(("llama.cpp's converter", ["--llama-cpp", args.llama_cpp]))
    for quant in args.quantize:
        for w, (writer, extra) in enumerate(writers):
            export = work / f"gguf-{quant}-{w}"
            run(
                [
                    *CLI,
                    "export",
                    str(run_dir),
                    "--format",
                    "gguf",
                    "--quantize",
                    quant,
                    "--overwrite",
                    *extra,
                    "--output",
                    str(export),
                ]
            )
            (gguf,) = export.glob("*.gguf")
            out = work / f"eval-llama-{quant}-{w}"
            overrides = [f"model.gguf_file={gguf.resolve()}", "eval.backend=llama_cpp"] + COMMON
            run([*CLI, "evaluate", "--overwrite", "--output", str(out), "--config", config] + overrides)
            rows.append(
                {
                    "variant": f"GGUF {quant} ({writer}), llama.cpp",
                    "bytes": gguf.stat().st_size,
                    "tokenised_as_run": tokenised_as_run(gguf, tokenizer, prompts),
                    **evaluated(out, run_metrics),
                }
            )

    harness.print_table(
        rows,
        [
            ("variant", "variant"),
            ("MiB", lambda r: r["bytes"] / 2**20, ".1f"),
            ("EM (greedy)", "em", ".2f"),
            ("± SE", "em_se", ".2f"),
            ("F1", "f1", ".2f"),
            ("questions", "questions"),
            ("seconds", "seconds", ".1f"),
            ("questions/s", "questions_per_second", ".2f"),
            ("prompts tokenised as the run", lambda r: r.get("tokenised_as_run"), ".3f"),
            ("the run's own EM (its decoding)", "run_em", ".2f"),
        ],
    )
    harness.write_result("gguf", rows, out=args.out, packages=("llama_cpp_python", "gguf"), run=str(run_dir))


if __name__ == "__main__":
    main()
