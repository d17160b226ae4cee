"""The report shows what a run trained on and what it was scored as: each data.train source's count (a mix lists
several; older runs without "train_sources" show nothing new), and a question-generation run (task: question) in a
table of its own, never beside the JSQuAD QA references or in the EM chart."""

from __future__ import annotations

import html
from pathlib import Path

from test_report_truth import _run, _scores

from jsquad_lora.report import charts
from jsquad_lora.report.render import QUESTION_ROWS, render_html, render_markdown
from jsquad_lora.report.summary import load_run
from jsquad_lora.report.tables import QUESTION_NOTE

TRAINED = {"model": "m", "train": {"seconds": 1.0}}
QA_HEAD = "## Our runs (JSQuAD dev, percent)"
QUESTION_HEAD = "## Question generation (against the human questions, percent)"


def _source(source: str, read: int, questions: int, *, limit=None, weight=None, mixed=None) -> dict:
    mixed = read if mixed is None else mixed
    return {"source": source, "limit": limit, "weight": weight, "read": read, "mixed": mixed, "questions": questions}


def _section(md: str, heading: str) -> str:
    """The Markdown from `heading` to the next heading of level 2."""
    start = md.index(heading)
    end = md.find("\n## ", start + len(heading))
    return md[start : end if end >= 0 else len(md)]


# --- 1. training sources ---------------------------------------------------------------------------------------


def test_a_mix_lists_each_sources_count_with_its_limit_and_weight(tmp_path):
    mix = [
        _source("human.json", 1000, 450, limit=500, mixed=500),
        _source("generated.jsonl", 300, 540, weight=2, mixed=600),
    ]
    md = render_markdown([load_run(_run(tmp_path, "mix", TRAINED | {"train_sources": mix}))])
    section = _section(md, "## Run mix")
    assert "### Training sources (data.train)\n" in section
    assert "| source | questions in training | read | limit | weight | after limit and weight |" in section
    assert "| human.json | 450 | 1,000 | 500 | — | 500 |" in section
    assert "| generated.jsonl | 540 | 300 | — | 2 | 600 |" in section
    assert "Training questions:" not in md and "not trained yet" not in md


def test_a_mix_without_limits_or_weights_has_no_such_columns(tmp_path):
    mix = [_source("a.json", 10, 10), _source("b.json", 20, 20)]
    md = render_markdown([load_run(_run(tmp_path, "plain", TRAINED | {"train_sources": mix}))])
    assert "| source | questions in training | read |\n" in md
    assert "| a.json | 10 | 10 |\n| b.json | 20 | 20 |\n" in md and "| limit |" not in md


def test_one_source_is_one_line(tmp_path):
    one = _run(tmp_path, "one", TRAINED | {"train_sources": [_source("$JSQUAD_DIR:train", 62859, 2000)]})
    capped = _run(tmp_path, "capped", TRAINED | {"train_sources": [_source("h.json", 80, 40, limit=40)]})
    md = render_markdown([load_run(one), load_run(capped)])
    assert "Training questions: 2,000 of the 62,859 read from $JSQUAD\\_DIR:train.\n" in md  # "_" escaped
    assert "Training questions: 40 of the 80 read from h.json (limit 40).\n" in md
    assert "Training sources" not in md
    page = render_html([load_run(one)], {})
    assert "<p>Training questions: 2,000 of the 62,859 read from $JSQUAD_DIR:train.</p>" in page


def test_an_untrained_run_says_its_set_is_as_configured(tmp_path):
    run = _run(tmp_path, "eval-only", {"model": "m", "train_sources": [_source("x.json", 5, 5)]})
    md = render_markdown([load_run(run)])
    assert "Training questions: 5 of the 5 read from x.json. Not trained yet: the set as configured.\n" in md
    mix = [_source("a.json", 1, 1), _source("b.json", 2, 2)]
    md = render_markdown([load_run(_run(tmp_path, "eval-mix", {"model": "m", "train_sources": mix}))])
    assert "| b.json | 2 | 2 |\n\nNot trained yet: the set as configured.\n" in md


def test_a_run_without_train_sources_shows_nothing_new(tmp_path):
    old = _run(tmp_path, "old", dict(TRAINED))
    broken = _run(tmp_path, "broken", TRAINED | {"train_sources": "human.json"})  # not a list: left out
    md = render_markdown([load_run(old), load_run(broken)])
    assert "Training questions" not in md and "Training sources" not in md


# --- 2. question-generation runs -------------------------------------------------------------------------------


def _question_scores(chrf: float, char_f1: float, em: float, count: int) -> dict:
    return {"chrf": chrf, "char_f1": char_f1, "exact_match": em, "count": count}


def _question_run(root: Path, name: str, *, config: str = "task: question\n", scores: bool = True) -> Path:
    """A task=question run: its QA scorer entries (EM 12.5 before, 23.75 after: meaningless as QA scores) and,
    where `scores`, its scores against the human questions."""
    before, after = _scores(12.5), _scores(23.75)
    if scores:
        before["question"] = _question_scores(31.25, 40.5, 6.25, 16)
        after["question"] = _question_scores(48.125, 55.0, 12.5, 16)
    rows = [
        {
            "id": f"q{i}",
            "question": f"答え{i}",
            "prediction": f"生成{i}？",
            "golds": [f"人の質問{i}？"],
            "em": 0.0,
            "f1": 0.5,
        }
        for i in range(3)
    ]
    return _run(root, name, TRAINED | {"before": before, "after": after}, {"before": rows, "after": rows}, config)


def test_a_question_run_has_its_own_table_and_no_qa_row(tmp_path):
    qa = _run(tmp_path, "qa", dict(TRAINED), config="name: qa\n")
    generated = _question_run(tmp_path, "qgen")
    runs = [load_run(qa), load_run(generated)]
    assert [run.task for run in runs] == ["answer", "question"]
    md = render_markdown(runs)
    ours = _section(md, QA_HEAD)
    assert "| qa | m |" in ours and "qgen" not in ours and "23.75" not in ours
    table = _section(md, QUESTION_HEAD)
    assert QUESTION_NOTE in table and "scored against the held-out human questions" in table
    assert "| run | model | stage | chrF | char F1 | exact match | questions |" in table
    assert "| qgen | m | before | 31.25 | 40.50 | 6.25 | 16 |" in table
    assert "| qgen | m | after | 48.12 | 55.00 | 12.50 | 16 |" in table
    assert "| qa |" not in table
    assert "## Run qgen (question generation)" in md and "## Run qa\n" in md
    # its paired before → after EM is no QA comparison: only the QA run could be paired, and it has no predictions
    assert "Paired comparisons" not in md
    examples = _section(md, "## Run qgen")
    assert "|  | id | answer given | generated question | human question | F1 |" in examples
    assert "| wrong | q0 | 答え0 | 生成0？ | 人の質問0？ | 0.50 |" in examples


def test_only_question_runs_have_no_qa_table(tmp_path):
    md = render_markdown([load_run(_question_run(tmp_path, "qgen"))])
    assert QA_HEAD not in md and QUESTION_HEAD in md
    assert "## Published reference scores (JSQuAD dev)" in md  # the references stay, with no run of ours beside


def test_a_question_run_is_known_by_its_config_or_by_its_scores(tmp_path):
    by_config = load_run(_question_run(tmp_path, "by-config", scores=False))  # scores not yet written
    by_scores = load_run(_question_run(tmp_path, "by-scores", config=""))  # no config.yaml
    answer = load_run(_run(tmp_path, "answer", dict(TRAINED), config="task: answer\nname: x\n"))
    unreadable = load_run(_run(tmp_path, "unreadable", dict(TRAINED), config="task: [unclosed\n"))
    assert (by_config.task, by_scores.task, answer.task, unreadable.task) == (
        "question",
        "question",
        "answer",
        "answer",
    )
    md = render_markdown([by_config, by_scores, answer])
    ours = _section(md, QA_HEAD)
    assert "| answer | m |" in ours and "by-config" not in ours and "by-scores" not in ours
    table = _section(md, QUESTION_HEAD)
    assert "| by-scores | m | after | 48.12 |" in table and "by-config" not in table  # no scores: no row


def test_the_em_chart_has_no_bar_of_a_question_run(tmp_path, monkeypatch):
    runs = [load_run(_run(tmp_path, "qa", dict(TRAINED))), load_run(_question_run(tmp_path, "qgen"))]
    figures = []
    monkeypatch.setattr(charts, "_png", lambda fig: figures.append(fig) or b"")
    charts.scores_png(runs)
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "qa (m) before" in labels and "qa (m) after" in labels
    assert not [label for label in labels if "qgen" in label]
    widths = sorted(bar.get_width() for bar in ax.patches)
    assert 10.0 in widths and 40.0 in widths and 12.5 not in widths and 23.75 not in widths


def test_the_html_report_labels_a_question_runs_rows(tmp_path):
    qa = _run(tmp_path, "qa", dict(TRAINED), {"after": [{"id": "a", "question": "?", "prediction": "x", "em": 1.0}]})
    page = render_html([load_run(qa), load_run(_question_run(tmp_path, "qgen"))], {})
    assert "<h2>Question generation (against the human questions, percent)</h2>" in page
    assert "<td>qgen</td><td>m</td><td>after</td><td>48.12</td><td>55.00</td><td>12.50</td><td>16</td>" in page
    note = html.escape(QUESTION_ROWS)
    assert page.count(note) == 1  # above the question run's browser, not the QA run's
    assert page.index(note) > page.index("<h2>Run qgen (question generation)</h2>")
    assert "<th>answer given</th><th>generated question</th><th>human question</th>" in page


def test_values_of_the_wrong_type_show_as_dashes(tmp_path):
    mix = [
        {"source": {"a": 1}, "limit": True, "weight": "x", "read": -1, "mixed": 1.5, "questions": "many"},
        {"source": "b|c", "limit": None, "weight": None, "read": 2, "mixed": 2, "questions": 2},
        ["not", "a", "source"],
    ]
    after = _scores(5.0) | {"question": {"chrf": "high", "char_f1": float("inf"), "exact_match": None, "count": True}}
    run = _run(tmp_path, "odd", TRAINED | {"train_sources": mix, "after": after}, config="task: [question]\n")
    md = render_markdown([load_run(run)])
    assert "| {'a': 1} | — | — | — | — | — |" in md and "| b\\|c | 2 | 2 | — | — | 2 |" in md
    assert "| odd | m | after | — | — | — | — |" in md  # known by its "question" scores, though none is a number
    assert "| odd | m | after | 5.00" not in md
