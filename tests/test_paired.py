"""Paired comparisons in the report: ΔEM with a passage bootstrap interval, and McNemar's exact test."""

from __future__ import annotations

import json
import math

import pytest

from jsquad_lora.report.paired import mcnemar_p, paired_comparison
from jsquad_lora.report.render import render_markdown
from jsquad_lora.report.summary import load_run


def test_mcnemar_exact_p_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p(3, 3) == 1.0
    # 2 against 10: two-sided tail of Binomial(12, 1/2) at 2
    assert mcnemar_p(2, 10) == pytest.approx(2 * sum(math.comb(12, k) for k in range(3)) / 2**12)


def test_paired_delta_interval_and_flips():
    a = {f"q{i}": float(i < 5) for i in range(10)}
    b = {f"q{i}": float(i < 7) for i in range(10)}
    found = paired_comparison(a, b)
    assert (found["em_a"], found["em_b"], found["delta"]) == (50.0, 70.0, pytest.approx(20.0))
    assert (found["only_a"], found["only_b"], found["questions"], found["passages"]) == (0, 2, 10, 10)
    low, high = found["ci95"]
    assert 0.0 <= low <= 20.0 <= high <= 60.0  # two flips in ten: never below 0, at most six in ten
    one_passage = paired_comparison(a, b, {qid: "p" for qid in a})  # one cluster: every resample is the data
    assert one_passage["ci95"] == [pytest.approx(20.0), pytest.approx(20.0)] and one_passage["passages"] == 1
    assert paired_comparison(a, {"other": 1.0}) is None
    assert paired_comparison(a, b, seed=0) == paired_comparison(a, b, seed=0)  # deterministic


def _run(tmp_path, name: str, before: dict, after: dict):
    run = tmp_path / name
    run.mkdir()
    metrics = {"model": "m", "recipe": name, "before": {}, "after": {}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    for stage, ems in (("before", before), ("after", after)):
        rows = [
            {"id": q, "question": "?", "prediction": "x", "golds": ["x"], "em": em, "f1": em} for q, em in ems.items()
        ]
        (run / f"predictions-{stage}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_run(run)


def test_the_report_shows_paired_comparisons(tmp_path):
    ids = [f"q{i}" for i in range(20)]
    one = _run(tmp_path, "one", {q: 0 for q in ids}, {q: int(k < 12) for k, q in enumerate(ids)})
    two = _run(tmp_path, "two", {q: 0 for q in ids}, {q: int(k < 8) for k, q in enumerate(ids)})
    text = render_markdown([one, two])
    assert "## Paired comparisons (the same questions)" in text
    assert "| one (before) | one (after) | 20 (passages unknown) | 0.00 | 60.00 | +60.00 |" in text
    assert "| one (after) | two (after) | 20 (passages unknown) | 60.00 | 40.00 | -20.00 |" in text
    assert f"| 4 | 0 | {mcnemar_p(4, 0):.3g} |" in text
