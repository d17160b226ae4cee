"""Probe: two GGUF exports of one run compared, e.g. Gemma 3 by this tool's writer and by llama.cpp's converter
(BENCHMARKS.md, issue 37): each file's vocabulary, the share of the run's first 200 dev-sample prompts that
llama.cpp tokenises into the run's ids, and the two files' tensors and non-tokenizer metadata, key by key.

    .venv/bin/jsquad-lora export runs/R --format gguf --quantize f16 --output g-own
    .venv/bin/jsquad-lora export runs/R --format gguf --quantize f16 --output g-conv --llama-cpp LLAMA_CPP
    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/probes/gemma_writer_vs_converter.py runs/R g-own g-conv

Needs llama-cpp-python (the tokenisation) and gguf.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_gguf import sample_prompts, tokenised_as_run  # noqa: E402

VOCABULARY_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token")


def main() -> None:
    import gguf

    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path, help="the run both files were exported from")
    parser.add_argument("exports", type=Path, nargs=2, help="two export directories (or .gguf files)")
    args = parser.parse_args()
    paths = [p if p.suffix == ".gguf" else next(p.glob("*.gguf")) for p in args.exports]
    readers = [gguf.GGUFReader(p) for p in paths]
    tokenizer, prompts = sample_prompts(args.run, str(args.run / "config.yaml"))
    for path, reader in zip(paths, readers, strict=True):
        vocabulary = {k: reader.fields[k].contents() for k in VOCABULARY_KEYS if k in reader.fields}
        share = tokenised_as_run(path, tokenizer, prompts)
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB, {vocabulary}, prompts tokenised as the run {share:.3f}")
    metadata = [
        {k: f.contents() for k, f in r.fields.items() if not k.startswith(("tokenizer.", "general.", "GGUF."))}
        for r in readers
    ]
    differ = {k: (metadata[0].get(k), metadata[1].get(k)) for k in metadata[0].keys() | metadata[1].keys()}
    print("metadata that differs:", {k: v for k, v in differ.items() if v[0] != v[1]})
    tensors = [{t.name: t for t in r.tensors} for r in readers]
    print("tensors in one file only:", sorted(tensors[0].keys() ^ tensors[1].keys()))
    shared = sorted(tensors[0].keys() & tensors[1].keys())
    unequal = [
        n
        for n in shared
        if tensors[0][n].data.shape != tensors[1][n].data.shape
        or not np.array_equal(np.asarray(tensors[0][n].data), np.asarray(tensors[1][n].data))
    ]
    print(f"{len(shared)} tensors in both; {len(unequal)} differ: {unequal[:10]}")


if __name__ == "__main__":
    main()
