"""The evaluation after tuning runs in eval.dtype, as `ask` and `serve` of the saved run do: the Trainer's bf16
autocast wrapper around `forward` is gone once training ends (it made float32 evaluations bf16 ones)."""

from __future__ import annotations

import json

from conftest import SHARED, needs_data
from test_generate import TINY

from jsquad_lora.cli import main
from jsquad_lora.data.formats import read_split
from jsquad_lora.tuned.loaded import load_run_model


@needs_data()
def test_predictions_after_tuning_equal_the_saved_run_answering_alone(tmp_path):
    out = tmp_path / "run"
    # barely trained: near-ties between tokens, where bf16 and float32 part ways
    args = [*TINY, "train.mixed_precision=bf16", "eval.decoding=greedy", "train.learning_rate=1e-9"]
    assert main(["run", "--output", str(out), *args]) == 0
    rows = [json.loads(line) for line in (out / "predictions-after.jsonl").read_text().splitlines()]
    run = load_run_model(out)  # float32, as eval.dtype=float32 asks
    dev = read_split(SHARED / "valid-v1.3.json", "valid").by_id()
    alone = [run.answer(dev[row["id"]].context, row["question"], "greedy") or "" for row in rows]
    assert [row["prediction"] for row in rows] == alone
