"""`jsquad-lora data generate`: questions from documents with a question-generation run (task=question) or an
OpenAI-compatible endpoint (this tool's `serve`, and a server written here with the standard library), checked
spans, the round-trip filter, the evaluation-leak refusal, and a resume after a kill. Tiny models: fast."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import SHARED, needs_data
from test_resume import cli, kill_when
from test_serve import running

from jsquad_lora.cli import main
from jsquad_lora.data.formats import read_split

TINY = [
    "--config",
    "tiny-cpu",
    "model.tiny_layers=1",
    "model.tiny_hidden=32",
    "model.tiny_heads=2",
    "model.tiny_intermediate=64",
    "data.train_limit=16",
    "data.eval_limit=4",
    "train.epochs=1",
    "train.synthetic_per_passage=0",
    "eval.before=false",
    "eval.side_check=false",
    "eval.dtype=float32",
]
QUESTION_TASK = ["task=question", "eval.decoding=greedy", "eval.max_new_tokens=24"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny question-generation run and a tiny QA run (the round-trip filter)."""
    root = tmp_path_factory.mktemp("generate")
    assert main(["run", "--output", str(root / "qg"), *TINY, *QUESTION_TASK]) == 0
    assert main(["run", "--output", str(root / "qa"), *TINY]) == 0
    return root / "qg", root / "qa"


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """A folder of Markdown documents: the first articles of JSQuAD's test split (never dev's)."""
    folder = tmp_path_factory.mktemp("docs")
    data = json.loads((SHARED / "test-v1.3.json").read_text(encoding="utf-8"))
    for k, article in enumerate(data["data"][:2]):
        body = "\n\n".join(p["context"].split(" [SEP] ", 1)[-1] for p in article["paragraphs"])
        (folder / f"doc{k}.md").write_text(f"# {article['title']}\n\n{body}\n", encoding="utf-8")
    return folder


def squad_rows(path: Path):
    data = json.loads(path.read_text(encoding="utf-8"))
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield paragraph["context"], qa


@needs_data()
def test_a_task_question_run_is_scored_against_the_human_questions(runs):
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    scores = metrics["after"]["question"]
    assert scores["count"] == 4 and 0 <= scores["chrf"] <= 100 and 0 <= scores["char_f1"] <= 100
    row = json.loads((runs[0] / "predictions-after.jsonl").read_text().splitlines()[0])
    dev = read_split(SHARED / "valid-v1.3.json", "valid").by_id()[row["id"]]
    assert row["golds"] == [dev.question]  # the target is the human question
    assert row["question"] == dev.answers[0]  # the prompt gives the answer


@needs_data()
def test_generated_questions_are_checked_spans_with_provenance(runs, docs, tmp_path, capsys):
    out = tmp_path / "gen.json"
    code, stdout, err = run_cli(
        capsys, "data", "generate", docs, "--output", out, "--generator", runs[0], "--filter-run", runs[1],
        "--filter-f1", "0", "--questions-per-passage", "2", "--seed", "3",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "gen.json.summary.json").read_text())
    assert summary["kept"] > 0 and str(summary["kept"]) in stdout
    # every proposal is kept or rejected for one reason (a run's replies are never "not JSON")
    assert summary["proposed"] == summary["candidates"] == summary["kept"] + sum(summary["rejected"].values())
    rows = list(squad_rows(out))
    assert len(rows) == summary["kept"]
    for context, qa in rows:
        (answer,) = qa["answers"]
        assert context[answer["answer_start"] :].startswith(answer["text"])  # a span, at the offset written
        assert answer["text"] not in qa["question"]
        provenance = qa["provenance"]
        assert provenance["generator"] == "run:qg" and provenance["candidates"] == "mecab"
        assert provenance["seed"] == 3 and set(provenance["round_trip"]) == {"answer", "em", "f1"}
    split = read_split(out, "train")  # every command reads it
    assert len(split) == len(rows) and not split.start_mismatches
    # the same command again: every passage is in the log, nothing is generated twice
    log = (tmp_path / "gen.json.log.jsonl").read_text()
    code, stdout, err = run_cli(
        capsys, "data", "generate", docs, "--output", out, "--generator", runs[0], "--filter-run", runs[1],
        "--filter-f1", "0", "--questions-per-passage", "2", "--seed", "3",
    )  # fmt: skip
    assert code == 0 and (tmp_path / "gen.json.log.jsonl").read_text() == log
    assert [qa for _, qa in squad_rows(out)] == [qa for _, qa in rows]


@needs_data()
def test_generating_on_evaluation_passages_is_refused(runs, docs, tmp_path, capsys):
    out = tmp_path / "gen.json"
    code, _, err = run_cli(capsys, "data", "generate", SHARED / "valid-v1.3.json", "--output", out,
                           "--generator", runs[0])  # fmt: skip
    assert code == 2 and "evaluation passages" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())
    # --exclude adds other evaluation data: here the test split the documents were taken from
    code, _, err = run_cli(capsys, "data", "generate", docs, "--output", out, "--generator", runs[0],
                           "--exclude", SHARED / "test-v1.3.json")  # fmt: skip
    assert code == 2 and "doc0.md#p" in err and not out.exists()


@needs_data()
def test_a_task_answer_run_is_refused_as_generator(runs, docs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "data", "generate", docs, "--output", tmp_path / "g.json", "--generator", runs[1])
    assert code == 2 and "task=answer" in err and "--generator" in err


@needs_data()
def test_a_killed_generation_resumes_with_nothing_lost_or_repeated(runs, docs, tmp_path):
    import subprocess

    whole, resumed = tmp_path / "whole.json", tmp_path / "resumed.json"
    args = ["data", "generate", docs, "--generator", runs[0], "--questions-per-passage", "2"]
    assert subprocess.run(cli(*args, "--output", whole), capture_output=True, timeout=600).returncode == 0
    log = tmp_path / "resumed.json.log.jsonl"
    groups_done = lambda: log.exists() and len(log.read_text().splitlines()) > 1  # noqa: E731
    assert kill_when([*args, "--output", resumed], groups_done), "it ended before it could be killed"
    assert not resumed.exists()  # no half-written output
    done = len(log.read_text().splitlines()) - 1
    result = subprocess.run(cli(*args, "--output", resumed), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{done} already done" in result.stderr
    passages = [json.loads(line)["passage"] for line in log.read_text().splitlines()[1:]]
    assert len(passages) == len(set(passages))  # no passage twice
    assert list(squad_rows(resumed)) == list(squad_rows(whole))


@needs_data()
def test_an_endpoint_reply_that_is_not_json_is_a_counted_reject(runs, docs, tmp_path, capsys):
    """This tool's own `serve` (its OpenAI API) on the tiny QA run: it answers with a span, never JSON."""
    from jsquad_lora.tuned.loaded import load_run_model
    from jsquad_lora.tuned.serve import create_app

    served = runs[0].parent / "served"  # a QA run with room for the endpoint's longer prompts
    if not served.exists():
        assert main(["run", "--output", str(served), *TINY, "model.max_length=2048"]) == 0
    loaded = load_run_model(served)
    app = create_app(loaded, run_name="tiny", default_decoding="greedy", api_key=None, created=0, wait_s=0.0)
    out = tmp_path / "gen.json"
    with running(app) as url:
        code, _, err = run_cli(capsys, "data", "generate", docs, "--output", out, "--generator-url", url + "/v1",
                               "--generator-model", "tiny")  # fmt: skip
    assert code == 2 and "no question passed" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "gen.json.summary.json").read_text())
    assert summary["rejected"]["not_json"] == summary["passages"] > 0 and not out.exists()


class _Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint written here: it takes each passage's first 4 characters as the answer
    (and says they start at 999: a wrong offset), asks one good question, one whose answer is not in the passage,
    and one near-duplicate of the first."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        passage = body["messages"][-1]["content"].split("文章:", 1)[1]
        pairs = [
            {"question": "この文章の最初の語は何ですか?", "answer": passage[:4], "answer_start": 999},
            {"question": "文章にない答えは何か?", "answer": "存在しない答えです"},
            {"question": "この文章の最初の語は何ですか？", "answer": passage[:4]},
        ]
        content = "```json\n" + json.dumps(pairs, ensure_ascii=False) + "\n```"
        reply = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }  # fmt: skip
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@needs_data()
def test_an_endpoint_choosing_pairs_is_checked_pair_by_pair(docs, tmp_path, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    out = tmp_path / "gen.json"
    try:
        code, _, err = run_cli(capsys, "data", "generate", docs, "--output", out, "--generator-url", url,
                               "--generator-model", "m", "--candidates", "generator")  # fmt: skip
    finally:
        server.shutdown()
    assert code == 0, err
    summary = json.loads((tmp_path / "gen.json.summary.json").read_text())
    n = summary["passages"]
    assert summary["kept"] == n and summary["rejected"]["answer_not_in_passage"] == n
    assert summary["rejected"]["near_duplicate"] == n
    for context, qa in squad_rows(out):
        assert qa["answers"][0]["answer_start"] + len(qa["answers"][0]["text"]) <= len(context)
        assert context.split(" [SEP] ", 1)[-1].startswith(qa["answers"][0]["text"])  # offset recomputed, not 999
        assert qa["provenance"]["generator"].startswith("endpoint:m@") and qa["provenance"]["kind"] == "generator"
