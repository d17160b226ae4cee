"""What the wrong answers of a run are: boundary errors (the prediction and a gold answer contain
one another: the right place, a span too long or too short) or a different span altogether.

    .venv/bin/python benchmarks/probes/error_kinds.py RUN_DIR [--stage after]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jsquad_lora.evaluate.scorers import jglue_normalize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for harness.py
import harness  # noqa: E402


def kind(row: dict) -> str:
    if row["em"]:
        return "right"
    prediction = jglue_normalize(row["prediction"])
    golds = [jglue_normalize(g) for g in row["golds"]]
    if not prediction:
        return "empty"
    if any(prediction in g or g in prediction for g in golds if g):
        return "boundary (contains or inside a gold answer)"
    if row["f1"] > 0:
        return "other span, some characters shared"
    return "other span, nothing shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--stage", default="after", choices=("before", "after"))
    args = parser.parse_args()
    rows = [
        json.loads(line)
        for line in (args.run / f"predictions-{args.stage}.jsonl").read_text(encoding="utf-8").split("\n")
        if line
    ]
    counts: dict[str, int] = {}
    for row in rows:
        counts[kind(row)] = counts.get(kind(row), 0) + 1
    harness.print_table(
        [{"kind": name, "n": n} for name, n in sorted(counts.items(), key=lambda item: -item[1])],
        [
            (f"{args.run} ({args.stage}, {len(rows)} questions)", "kind"),
            ("questions", "n"),
            ("share", lambda r: f"{100 * r['n'] / len(rows):.1f} %"),
        ],
    )


if __name__ == "__main__":
    main()
