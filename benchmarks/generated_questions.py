"""What a `data generate` run produced, as BENCHMARKS.md and docs/generate.md show it: the checks' pass rates in
the order they apply, the round-trip rate, the cost per 1,000 passages, and N kept pairs verbatim (a seeded draw).

    .venv/bin/python benchmarks/generated_questions.py runs/gen.json [--pairs 20] [--seed 0]

Reads OUT.json.summary.json and OUT.json.log.jsonl beside OUT.json (the log holds every passage's kept pairs
and, with a filter run, the pairs the round trip dropped).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

#: the checks in the order `data/qa_checks.check_pair` and the round trip apply them
ORDER = ("empty", "answer_not_in_passage", "question_contains_answer", "near_duplicate", "copies_passage", "round_trip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the OUT.json of a data generate run")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = json.loads(args.output.with_name(args.output.name + ".summary.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in args.output.with_name(args.output.name + ".log.jsonl").open()][1:]
    rejected = summary["rejected"]
    left = summary["proposed"]
    print(f"passages {summary['passages']}, candidates {summary['candidates']}, proposed {left}")
    print("\n| check | rejected | left | passes |\n|---|---|---|---|")
    for reason in ORDER:
        gone = rejected.get(reason, 0)
        if reason == "round_trip" and not summary["settings"].get("filter"):
            continue
        print(f"| {reason} | {gone:,} | {left - gone:,} | {100 * (left - gone) / left:.1f} % |" if left else "")
        left -= gone
    share = 100 * summary["kept"] / max(1, summary["proposed"])
    print(f"\nkept {summary['kept']:,} of {summary['proposed']:,} proposed ({share:.1f} %)")
    if summary.get("seconds_this_try"):
        per = 1000 * summary["seconds_this_try"] / summary["passages"]
        seconds = summary["seconds_this_try"]
        print(f"time: {seconds:.0f} s for {summary['passages']} passages = {per:.0f} s per 1,000 passages")
    kept = [(row["passage"], pair) for row in rows for pair in row["kept"]]
    shown = random.Random(args.seed).sample(kept, min(args.pairs, len(kept)))
    print(f"\n{len(shown)} kept pairs (seed {args.seed}):\n")
    print("| passage | answer | question | round trip |\n|---|---|---|---|")
    for passage, pair in sorted(shown, key=lambda item: item[0]):
        trip = pair.get("round_trip") or {}
        print(f"| {passage} | {pair['answer']} | {pair['question']} | {trip.get('answer', '—')} |")


if __name__ == "__main__":
    main()
