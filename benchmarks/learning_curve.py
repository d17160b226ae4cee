"""The learning curve: EM after tuning against training questions (and epochs), from finished run directories,
as a table, a JSON result and a plot with each point's standard error (the sample's, passages as clusters).

    .venv/bin/python benchmarks/learning_curve.py runs/lc-250 runs/lc-500 runs/abl-base runs/gemma-3-270m \
        [--plot docs/learning-curve.png] [--out benchmarks/results/learning-curve.json]

The runs should differ only in data.train_sample and train.epochs (the script says where they do not), and be
evaluated on the same questions (it refuses runs whose eval_ids.json differ).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import harness

from jsquad_lora.config.load import load_config

#: config keys a learning curve varies; any other difference between the runs is printed
VARIED = ("data.train_sample", "train.epochs")
#: config keys that make another recipe: runs that differ in them are separate curves
RECIPE = ("lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "train.learning_rate", "prompt.template")


def point(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    cfg = load_config(run / "config.yaml")
    after = metrics["after"]["jglue"]
    return {
        "run": str(run),
        "training_questions": metrics["train"]["examples"],
        "epochs": cfg.train.epochs,
        "em": after["exact_match"],
        "em_se": metrics.get("sample", {}).get("em_standard_error", {}).get("after"),
        "f1": after["f1"],
        "questions": after["count"],
        "train_seconds": metrics["train"]["seconds"],
        "_eval_ids": (run / "eval_ids.json").read_text(encoding="utf-8") if (run / "eval_ids.json").exists() else None,
        "_config": _flat(json.loads(json.dumps(cfg, default=lambda o: o.__dict__))),
    }


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("columns", "fsdp_config"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label in dict.fromkeys(r["recipe"] for r in rows):
        series = sorted((r for r in rows if r["recipe"] == label), key=lambda r: r["training_questions"])
        ax.errorbar(
            [r["training_questions"] for r in series],
            [r["em"] for r in series],
            yerr=[r["em_se"] or 0 for r in series],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training questions (JSQuAD test split)")
    ax.set_ylabel("EM after tuning (1,001 dev questions, +/- SE)")
    ax.set_title("Gemma 3 270M + LoRA, 2 CPU cores: the learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG file for the plot")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/learning-curve.json)")
    args = parser.parse_args()
    rows = [point(run) for run in args.runs]
    if len({r["_eval_ids"] for r in rows}) > 1:
        raise SystemExit("the runs were evaluated on different questions (eval_ids.json differ): no curve")
    keys = set().union(*(r["_config"] for r in rows))
    differing = sorted(
        k for k in keys if len({json.dumps(r["_config"].get(k)) for r in rows}) > 1 and k not in VARIED and k != "name"
    )
    if differing:
        print("note: the runs also differ in " + ", ".join(differing))
    recipe_keys = [k for k in RECIPE if len({json.dumps(r["_config"].get(k)) for r in rows}) > 1] + ["train.epochs"]
    for r in rows:
        r["recipe"] = ", ".join(f"{k.split('.')[-1]} {r['_config'].get(k)}" for k in recipe_keys)
        r.pop("_eval_ids")
        r.pop("_config")
    rows.sort(key=lambda r: (r["recipe"], r["training_questions"]))
    harness.print_table(
        rows,
        [
            ("training questions", "training_questions", ","),
            ("epochs", "epochs", "g"),
            ("EM after", "em", ".2f"),
            ("± SE", "em_se", ".2f"),
            ("F1", "f1", ".2f"),
            ("training s", "train_seconds", ".0f"),
            ("recipe", "recipe", ""),
            ("run", "run", ""),
        ],
    )
    if args.plot:
        plot(rows, args.plot)
    harness.write_result("learning-curve", rows, out=args.out, differing_keys=differing)


if __name__ == "__main__":
    main()
