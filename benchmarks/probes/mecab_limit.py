"""Where one MeCab call (fugashi + unidic-lite, "-Owakati") kills the process, for a few kinds of text.

    .venv/bin/python benchmarks/probes/mecab_limit.py [--sizes 50000 100000 200000 400000 800000]

Each size is tagged in a fresh subprocess; exit 139 (-11) is the segfault that
`scoring.MECAB_MAX_CHARS` keeps every call far away from. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for harness.py
import harness  # noqa: E402

TEXTS = {"a": "a", "東": "東", "ab ": "ab ", "日本語。": "日本語の文章です。"}
PROBE = "import sys; from fugashi import Tagger; Tagger('-Owakati').parse(sys.stdin.read()); print('ok')"


def survives(unit: str, size: int) -> bool:
    text = (unit * (size // len(unit) + 1))[:size]
    result = subprocess.run([sys.executable, "-c", PROBE], input=text, capture_output=True, text=True)
    return result.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000, 400_000, 800_000])
    args = parser.parse_args()
    rows = [
        {"text": f"`{name}`", **{size: "ok" if survives(unit, size) else "CRASH" for size in args.sizes}}
        for name, unit in TEXTS.items()
    ]
    harness.print_table(rows, [("text (repeated)", "text"), *((f"{size:,}", size) for size in args.sizes)])


if __name__ == "__main__":
    main()
