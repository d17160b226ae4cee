"""A run directory's results without its timings: one sha256 per file, for issue 20's byte-identical check.

python docs/reshape/fingerprint.py OUT_DIR [OUT_DIR2]   # prints the digests; with two, the files that differ
"""

import hashlib
import json
import sys
from pathlib import Path

#: files compared as written; metrics.json and loss.jsonl lose their timing fields first
EXACT = ("config.yaml", "eval_ids.json", "predictions-before.jsonl", "predictions-after.jsonl", "side_check.json")
TIMING = ("seconds", "per_second", "runtime", "samples_per", "steps_per", "flos", "eval_before", "eval", "train")


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not any(t in k for t in TIMING[:6])}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def digests(root: Path) -> dict[str, str]:
    found = {}
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in EXACT:
            if (run / name).exists():
                found[f"{run.name}/{name}"] = hashlib.sha256((run / name).read_bytes()).hexdigest()[:16]
        if (run / "loss.jsonl").exists():
            rows = [_untimed(json.loads(line)) for line in (run / "loss.jsonl").read_text().splitlines()]
            found[f"{run.name}/loss.jsonl"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
        metrics = json.loads((run / "metrics.json").read_text())
        kept = {k: _untimed(v) for k, v in metrics.items()}
        found[f"{run.name}/metrics.json"] = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
    return found


if __name__ == "__main__":
    first = digests(Path(sys.argv[1]))
    if len(sys.argv) == 2:
        print(json.dumps(first, indent=1))
    else:
        second = digests(Path(sys.argv[2]))
        differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
        print(f"{len(first)} files, {len(differ)} differ" + "".join(f"\n  {k}" for k in differ))
        sys.exit(1 if differ else 0)
