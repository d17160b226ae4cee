"""Where one MeCab call (fugashi + unidic-lite, "-Owakati") kills the process, for a few kinds of text.

    .venv/bin/python benchmarks/mecab_limit.py [--sizes 50000 100000 200000 400000 800000]

Each size is tagged in a fresh subprocess; exit 139 (-11) is the segfault that
`scoring.MECAB_MAX_CHARS` keeps every call far away from. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

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
    print(f"{'text':<10}" + "".join(f"{s:>10,}" for s in args.sizes))
    for name, unit in TEXTS.items():
        print(f"{name:<10}" + "".join(f"{'ok' if survives(unit, s) else 'CRASH':>10}" for s in args.sizes))


if __name__ == "__main__":
    main()
