"""The question browser of report.html: its rows (predictions joined with passages and gold spans), and
the page in headless Chromium on 4,442 questions: paged, filters and search change the visible rows,
a question opens to its passage with the gold answer and the predictions highlighted, before beside after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jsquad_lora.data.question import Question
from jsquad_lora.report.question_browser import PAGE_SIZE, browser_data, eval_questions, render_browser
from jsquad_lora.report.render import write_report

N = 4442  # the JSQuAD dev set's size
PER_PASSAGE = 22
ASTRAL = "𠮷"  # one code point, two UTF-16 units: the page's offsets must count it twice


def kind(i: int) -> str:
    return ("right", "fixed", "broken", "wrong")[i % 4]


def make_run(root: Path, *, with_data: bool = True) -> Path:
    """A run directory with N predictions before and after tuning, and (with_data) the split they came from.
    Question i's gold answer is 答{i:04d}; by i % 4 it is right before and after, fixed by tuning, broken by
    tuning, or wrong twice; its wrong answers are other spans of its passage (項目{i})."""
    paragraphs = []
    for p in range(0, N, PER_PASSAGE):
        body = ASTRAL if p == 0 else ""
        qas = []
        for i in range(p, min(p + PER_PASSAGE, N)):
            item = f"項目{i}は"
            qas.append(
                {
                    "id": f"q{i}",
                    "question": "<b>太字</b>の質問" if i == 7 else f"項目{i}は何か。",
                    "answers": [{"text": f"答{i:04d}", "answer_start": len(f"記事{p} [SEP] ") + len(body + item)}],
                    "is_impossible": False,
                }
            )
            body += f"{item}答{i:04d}である。"
        paragraphs.append({"context": f"記事{p} [SEP] {body}", "qas": qas})
    data = root / "valid.json"
    data.write_text(json.dumps({"data": [{"title": "記事", "paragraphs": paragraphs}]}, ensure_ascii=False))
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"name: fake\ndata:\n  dir: {data if with_data else root / 'gone.json'}\n")
    (run / "metrics.json").write_text(json.dumps({"model": "tiny", "recipe": "fake", "finished": True}))
    for stage in ("before", "after"):
        rows = []
        for i in range(N):
            right = kind(i) == "right" or kind(i) == ("fixed" if stage == "after" else "broken")
            question = "<b>太字</b>の質問" if i == 7 else f"項目{i}は何か。"
            prediction = f"答{i:04d}" if right else f"項目{i}" + ("" if stage == "before" else "は")
            golds, em = [f"答{i:04d}"], float(right)
            rows.append({"id": f"q{i}", "question": question, "prediction": prediction, "golds": golds, "em": em})
            rows[-1]["f1"] = 100 * em
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (run / f"predictions-{stage}.jsonl").write_text(lines)
    return run


def test_rows_join_stages_with_passages_and_utf16_gold_spans() -> None:
    q = Question("q1", "t", f"{ASTRAL}梅雨は東アジアの現象", "どこ?", ("東アジア", "欧州"), (4, 0))
    predictions = {
        "before": [{"id": "q1", "question": "どこ?", "prediction": "梅雨", "golds": ["東アジア"], "em": 0, "f1": 0}],
        "after": [
            {"id": "q1", "question": "どこ?", "prediction": "東アジア", "golds": ["東アジア"], "em": 1, "f1": 100.0},
            {"id": "q9", "question": "?", "prediction": "</script><script>alert(1)", "golds": [], "em": 0, "f1": 0},
        ],
    }
    data = browser_data(predictions, {"q1": q})
    assert data["stages"] == ["before", "after"] and data["passages"] == [q.context]
    first, unknown = data["rows"]
    # 東アジア starts at code point 4, UTF-16 index 5 (the astral character counts twice); 欧州 is not there
    assert first | {"gs": None} == {
        "id": "q1",
        "q": "どこ?",
        "g": ["東アジア"],
        "b": "梅雨",
        "be": False,
        "bf": 0.0,
        "a": "東アジア",
        "ae": True,
        "af": 100.0,
        "p": 0,
        "gs": None,
    }
    assert first["gs"] == [[5, 9]] and unknown["p"] == -1 and "b" not in unknown
    fragment = render_browser(data, "0", None)
    assert "</script><script>" not in fragment and fragment.count("</script>") == 1
    embedded = fragment.split('id="qb-data-0">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded)["rows"][1]["a"] == "</script><script>alert(1)"  # the same text, escaped


def test_missing_split_is_a_note_not_an_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, with_data=False)
    questions, note = eval_questions(run)
    assert questions == {} and "gone.json" in note and "jsquad-lora report" in note
    page = (write_report([run], tmp_path / "out")[1]).read_text()
    assert "Passages are not shown" in page and "qb-data-0" in page
    (run / "config.yaml").write_text("data: [not, a, mapping\n")
    assert eval_questions(run)[0] == {}  # a broken config.yaml: no passages either, and no error


def test_report_browser_in_chromium(tmp_path: Path, chromium) -> None:
    run = make_run(tmp_path)
    html = write_report([run], tmp_path / "out")[1]
    page = chromium.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    rows, count = page.locator(".qb-rows > details"), page.locator(".qb-count")
    try:
        page.goto(html.as_uri())
        assert count.text_content() == f"questions 1–{PAGE_SIZE} of {N} (page 1/{-(-N // PAGE_SIZE)})"
        assert rows.count() == PAGE_SIZE  # paged: one page of rows in the document, not 4,442

        expected = {"right": 2222, "wrong": 2220, "fixed by tuning": 1111, "broken by tuning": 1110}
        expected["answer changed by tuning"] = N - 1111  # every question but the ones right twice
        for label, number in expected.items():
            page.click(f"button:text-is('{label} ({number})')")
            assert count.text_content().endswith(f"of {number} (page 1/{-(-number // PAGE_SIZE)})")
        tags = {t.text_content() for t in page.locator(".qb-rows .qb-tag").all()}
        assert tags == {"fixed", "broken", "wrong"}  # the "changed" filter's page 1: no question right twice

        page.click("button:text-is('fixed by tuning (1111)')")
        assert {t.text_content() for t in page.locator(".qb-rows .qb-tag").all()} == {"fixed"}
        page.click(".qb-next")
        assert count.text_content().startswith(f"questions {PAGE_SIZE + 1}–{2 * PAGE_SIZE} of 1111")

        page.click(f"button:text-is('all ({N})')")
        page.fill("input[type=search]", "項目5は何か")  # question 5's text (its answer is in 22 rows' passage)
        page.locator(".qb-count", has_text="of 1 ").wait_for()
        assert rows.count() == 1
        rows.first.locator("summary").click()  # open question 5 (fixed by tuning)
        rows.first.locator(".qb-col").first.wait_for()  # the passages are drawn when a question opens
        before, after = rows.first.locator(".qb-col").all()
        assert before.locator("mark.gold").text_content() == "答0005"
        assert before.locator("mark.pred").text_content() == "項目5"  # its wrong answer, elsewhere in the passage
        assert after.locator("mark.gold.pred").text_content() == "答0005"  # right: both highlights on one span
        assert after.locator(".qb-passage").text_content() == before.locator(".qb-passage").text_content()
        assert before.locator(".qb-passage").text_content().startswith(ASTRAL + "項目0は答0000である。")

        page.fill("input[type=search]", "太字")
        page.locator(".qb-rows > details", has_text="太字").wait_for()
        assert count.text_content().startswith("questions 1–1 of 1 ")
        assert "<b>太字</b>の質問" in rows.first.text_content() and page.locator(".qb-rows b").count() == 0
        page.fill("input[type=search]", "no such text")
        page.locator(".qb-count", has_text="no question matches").wait_for()
        assert rows.count() == 0
    finally:
        page.close()
    assert errors == [] and all(u.startswith("file://") for u in requests), (errors, requests)


@pytest.mark.parametrize("stage", ["before", "after"])
def test_one_stage_only(tmp_path: Path, stage: str, chromium) -> None:
    run = make_run(tmp_path)
    (run / f"predictions-{'after' if stage == 'before' else 'before'}.jsonl").unlink()
    page = chromium.new_page()
    try:
        page.goto(write_report([run], tmp_path / "out")[1].as_uri())
        labels = [b.text_content() for b in page.locator(".qb-bar button[data-filter]").all()]
        right = 2222 if stage == "after" else 1111 + 1110
        assert labels == [f"all ({N})", f"right ({right})", f"wrong ({N - right})"]  # no "by tuning" filters
        page.locator(".qb-rows summary").first.click()
        page.locator(".qb-rows .qb-col").first.wait_for()
        assert page.locator(".qb-rows .qb-col").count() == 1
    finally:
        page.close()
