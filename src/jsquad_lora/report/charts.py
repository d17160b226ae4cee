"""The report's charts: scores beside the references, and the training loss (PNG bytes, pure)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from jsquad_lora.evaluate.scorers import PRIMARY_SCORER
from jsquad_lora.report.references import REFERENCE_SCORES
from jsquad_lora.report.summary import STAGES, RunSummary, distinct_names
from jsquad_lora.util.files import write_bytes


def _ascii(text: str) -> str:
    # The default fonts lack CJK glyphs; ASCII labels render everywhere (escapes, so two names stay two).
    return text.replace("—", "-").encode("ascii", "backslashreplace").decode("ascii")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def scores_png(runs: Sequence[RunSummary]) -> bytes:
    """Horizontal bars of EM, sorted: references grey, our QA runs (jglue scorer) coloured, each of ours with its
    ± standard error as an error bar where its evaluation was a sample (metrics.json sample.em_standard_error).
    Question-generation runs have no bar: their EM is a generated question's against the human one."""
    return _png(scores_figure(runs))


def scores_figure(runs: Sequence[RunSummary]) -> Any:
    """The figure `scores_png` draws (a matplotlib Figure: one axes, its bars, and our error bars)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    runs = distinct_names(runs)
    colours = {"reference": "#a0a0a0", "before": "#6baed6", "after": "#e6550d"}
    bars: list[tuple[float, str, str, float | None]] = [
        (r.em, _ascii(r.system if r.setting == "—" else f"{r.system} [{r.setting}]"), "reference", None)
        for r in REFERENCE_SCORES
    ]
    for run in runs:
        if run.task == "question":
            continue
        for stage in STAGES:
            if (em := run.score(stage, PRIMARY_SCORER, "exact_match")) is not None:
                label = _ascii(f"{run.name} ({run.model_name}) {stage}")
                bars.append((em, label, stage, run.em_standard_error(stage)))
    bars.sort(key=lambda b: b[0])
    fig = Figure(figsize=(9, 1.5 + 0.32 * len(bars)))
    ax = fig.add_subplot()
    ax.barh(range(len(bars)), [b[0] for b in bars], color=[colours[b[2]] for b in bars])
    ax.set_yticks(range(len(bars)), [b[1] for b in bars], fontsize=8)
    if errors := [(i, em, se) for i, (em, _, _, se) in enumerate(bars) if se is not None]:
        ax.errorbar(
            [em for _, em, _ in errors],
            [i for i, _, _ in errors],
            xerr=[se for _, _, se in errors],
            fmt="none",
            ecolor="black",
            elinewidth=1,
            capsize=3,
        )
    for i, (em, _, _, se) in enumerate(bars):
        ax.text(em + (se or 0) + 0.5, i, f"{em:.1f}" if se is None else f"{em:.1f} ±{se:.1f}", va="center", fontsize=7)
    ax.set_xlim(0, 105)
    ax.set_xlabel("Exact Match (%)" + ("; error bars: ± one standard error of a sampled evaluation" if errors else ""))
    ax.set_title("JSQuAD dev EM: ours (jglue scorer) vs published references (scorer as published)", fontsize=9)
    ax.legend(
        handles=[
            Patch(color=c, label=f"ours, {k} tuning" if k != "reference" else "published reference")
            for k, c in colours.items()
        ],
        fontsize=7,
        loc="lower right",
    )
    return fig


def loss_png(runs: Sequence[RunSummary]) -> bytes | None:
    """Training loss against step, one line per run; None when no run logged any loss."""
    from matplotlib.figure import Figure

    if not any(r.loss for r in runs):
        return None
    runs = distinct_names(runs)
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for run in runs:
        if run.loss:
            ax.plot([s for s, _ in run.loss], [v for _, v in run.loss], label=_ascii(run.name), linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_scores(runs: Sequence[RunSummary], path: Path | str) -> Path:
    """Write the EM bar chart PNG to `path` (atomically)."""
    return write_bytes(path, scores_png(runs))


def plot_loss(runs: Sequence[RunSummary], path: Path | str) -> Path | None:
    """Write the loss curve PNG to `path` (atomically); None and no file when no run logged loss."""
    data = loss_png(runs)
    return write_bytes(path, data) if data is not None else None
