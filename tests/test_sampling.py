"""Evaluation/training samples: fixed, stratified by article, whole passages; their standard error; `score --ids`."""

import json

import pytest
from conftest import needs_data

from jsquad_lora.cli import main
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.data.question import Question
from jsquad_lora.data.sampling import sample_standard_error, stratified_sample


def _questions() -> list[Question]:
    """3 articles of different sizes, 2-4 questions per passage."""
    out = []
    for a, passages in enumerate([[3, 4, 2, 3], [2, 2], [4, 3, 3, 2, 4, 2]]):
        for p, n in enumerate(passages):
            out += [Question(f"a{a}p{p}q{k}", f"title{a}", f"passage {a}-{p}", "?", ("x",), (0,)) for k in range(n)]
    return out


def test_sample_is_fixed_whole_passages_in_data_order():
    qs = _questions()
    sample = stratified_sample(qs, 15, seed=7)
    assert sample == stratified_sample(qs, 15, seed=7)
    assert len(sample) >= 15
    assert [q for q in qs if q in sample] == sample  # data order
    chosen = {q.context for q in sample}
    assert all((q in sample) == (q.context in chosen) for q in qs)  # a passage is in whole or not at all
    assert stratified_sample(qs, 100, seed=7) == qs


def test_every_article_gets_about_its_share():
    qs = _questions()
    sample = stratified_sample(qs, 20, seed=3)
    for title in {q.title for q in qs}:
        share = 20 * sum(q.title == title for q in qs) / len(qs)
        taken = sum(q.title == title for q in sample)
        assert abs(taken - share) <= 4, (title, taken, share)  # within one passage (<= 4 questions)


def test_different_seeds_give_different_samples():
    qs = _questions()
    assert len({tuple(q.id for q in stratified_sample(qs, 12, seed=s)) for s in range(8)}) > 1


def test_standard_error_by_clusters():
    # two clusters: values [100, 100] and [0, 0]; mean 50; residual sums +100 and -100;
    # variance = (1 - n/N) * k/(k-1) * sum(r^2) / n^2 = (1 - 4/8) * 2 * 20000 / 16 = 1250
    assert sample_standard_error([100, 100, 0, 0], ["a", "a", "b", "b"], population=8) == pytest.approx(1250**0.5)
    assert sample_standard_error([100, 0, 100, 0], ["a", "a", "b", "b"], population=8) == 0.0  # clusters alike
    assert sample_standard_error([100, 0, 100], ["a", "b", "c"], population=3) == 0.0  # the whole population


@needs_data()
def test_score_with_ids_scores_the_sample_only(tmp_path, capsys):
    data = resolve_split(None, "valid")
    qs = load_split(data).questions[:10]
    ids = tmp_path / "eval_ids.json"
    ids.write_text(json.dumps([q.id for q in qs]))
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps({q.id: q.answers[0] for q in qs}, ensure_ascii=False))
    assert main(["score", str(data), str(predictions), "--ids", str(ids)]) == 0
    assert json.loads(capsys.readouterr().out) == {"exact_match": 100.0, "f1": 100.0, "count": 10}
    ids.write_text(json.dumps(["no-such-id"]))
    assert main(["score", str(data), str(predictions), "--ids", str(ids)]) == 2
    assert "no-such-id" in capsys.readouterr().err


def test_float32_cpu_training_takes_its_own_sample_size():
    import torch

    from jsquad_lora.config.load import load_config
    from jsquad_lora.data.select import train_sample_size

    cfg = load_config(
        "gemma-3-270m", ["data.train_sample=2000", "data.train_sample_cpu_float32=700", "train.mixed_precision=float32"]
    )
    assert train_sample_size(cfg) == (2000 if torch.cuda.is_available() else 700)
    cfg = load_config(
        "gemma-3-270m", ["data.train_sample=2000", "data.train_sample_cpu_float32=700", "train.mixed_precision=bf16"]
    )
    assert train_sample_size(cfg) == 2000
