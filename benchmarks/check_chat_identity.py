"""The chat-model backend scored against the run it serves: a finished run under its own `serve` (OpenAI API),
evaluated through `eval.backend=openai` on the first N questions of its evaluation, against the same run
answering each question alone (`LoadedRun.answer`, greedy, model.dtype: what `serve` generates with), and
the backend's questions/s at each concurrency. Start the server first:

    jsquad-lora serve --run RUN --port 8765 &
    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/check_chat_identity.py --run RUN \
        --url http://127.0.0.1:8765/v1 --questions 100 --concurrency 1 4 8 --work /tmp/chat-identity

Prints one table row per concurrency: questions, seconds, questions/s, answers equal to the local ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--work", type=Path, default=Path("/tmp/chat-identity"))
    args = parser.parse_args()
    from jsquad_lora.data.select import read_data
    from jsquad_lora.tuned.loaded import load_run_model

    ids = json.loads((args.run / "eval_ids.json").read_text())[: args.questions]
    common = [f"data.eval_ids={args.run / 'eval_ids.json'}", "data.eval_sample=null", f"data.eval_limit={len(ids)}"]
    rows = []
    for concurrency in args.concurrency:
        out = args.work / f"c{concurrency}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "jsquad_lora", "evaluate", "--output", str(out), *common,
                   "eval.backend=openai", "eval.decoding=greedy", f"eval.openai.base_url={args.url}",
                   f"eval.openai.model={args.run.name}", f"eval.openai.concurrency={concurrency}"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        answers = {r["id"]: r["prediction"] for r in map(json.loads, (out / "predictions-before.jsonl").open())}
        rows.append((concurrency, len(answers), seconds, answers))
    run = load_run_model(args.run)
    split = read_data(run.cfg, "eval", download=False).by_id()
    local = {qid: run.answer(split[qid].context, split[qid].question, "greedy") or "" for qid in ids}
    print("| concurrency | questions | seconds (process, incl. start) | questions/s | equal to the run alone |")
    print("|---|---|---|---|---|")
    for concurrency, n, seconds, answers in rows:
        equal = sum(answers.get(q) == local[q] for q in ids)
        print(f"| {concurrency} | {n} | {seconds:.1f} | {n / seconds:.2f} | {equal} of {len(ids)} |")
    differ = [(q, rows[0][3].get(q), local[q]) for q in ids if rows[0][3].get(q) != local[q]]
    for qid, remote, alone in differ[:10]:
        print(f"differs: {qid}: served {remote!r} vs alone {alone!r}")


if __name__ == "__main__":
    main()
