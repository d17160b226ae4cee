"""The `jsquad-lora` command line: parses arguments and wires the stages; no logic of its own.

argparse (standard library) rather than click/typer: usage errors already exit with 2, the
code we need is small, and `key=value` overrides are plain positional strings.
Heavy modules (torch, transformers) are imported inside the commands that need them, so
`score`, `prompt` and `stats` start fast. The `data` subcommands, and the options of every command
that reads a source, are in commands/data.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from jsquad_lora.commands.data import add_data_parser, read_source, source_options
from jsquad_lora.config.load import DEFAULT_CONFIG
from jsquad_lora.errors import InputError, brief
from jsquad_lora.evaluate.scorers import SCORERS
from jsquad_lora.generate.decoding import DECODING_MODES
from jsquad_lora.prompts.templates import TEMPLATES


def cmd_score(args: argparse.Namespace) -> int:
    from jsquad_lora.evaluate.predictions import load_predictions
    from jsquad_lora.evaluate.scorers import answerability_scores, score_predictions

    questions = read_source(args, args.data).questions
    if args.ids:
        from jsquad_lora.data.sampling import select_ids

        questions = select_ids(questions, args.ids)
    predictions = load_predictions(
        args.predictions, questions, allow_unknown_ids=args.ignore_unknown_ids or bool(args.ids)
    )
    scores = score_predictions(questions, predictions, args.metric).as_dict()
    # SQuAD v2's split (jglue scorer) beside, where DATA has questions without an answer
    print(json.dumps({**scores, **answerability_scores(questions, predictions)}))
    return 0


def cmd_prompt(args: argparse.Namespace) -> int:
    from jsquad_lora.prompts.fewshot import select_fewshot
    from jsquad_lora.prompts.templates import render_prompt

    split = read_source(args, args.data)
    question = split.by_id().get(args.id)
    if question is None:
        raise InputError(
            split.path,
            f"no question with id {brief(args.id)}",
            fix="pick an id from the file (e.g. " + split.questions[0].id + ")",
        )
    examples = []
    if args.fewshot:
        pool = read_source(args, args.train, "train").questions if args.train else split.questions
        examples = select_fewshot(pool, args.fewshot, args.seed, question)
    tokenizer = None
    if args.token_ids and not args.tokenizer:
        raise InputError("--token-ids", "token ids need a tokenizer", fix="add --tokenizer MODEL_DIR_OR_HUB_ID")
    if args.tokenizer:
        from jsquad_lora.model.load import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer, trust_remote_code=False)
    if args.token_ids:
        from jsquad_lora.encoding.tokens import answer_ids, prompt_ids

        text = render_prompt(question, args.template, examples=examples, tokenizer=tokenizer)
        ids = prompt_ids(tokenizer, text) + (
            answer_ids(tokenizer, question.answers[0]) if args.with_answer and question.answers else []
        )
        print(json.dumps(ids))
        return 0
    sys.stdout.write(
        render_prompt(question, args.template, with_answer=args.with_answer, examples=examples, tokenizer=tokenizer)
    )
    sys.stdout.flush()
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from jsquad_lora.data.stats import split_stats

    stats = split_stats(read_source(args, args.data))
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
        return 0
    print(
        f"{stats['file']}: {stats['questions']} questions, {stats['paragraphs']} paragraphs, "
        f"{stats['articles']} articles, {stats['gold_answers']} gold answers"
        + (f", {stats['unanswerable']} questions without an answer" if stats["unanswerable"] else "")
    )
    rows = [["chars", "min", "p50", "p90", "p99", "max", "mean"]]
    for key in ("context_chars", "question_chars", "answer_chars"):
        if (s := stats[key]) is None:
            continue
        rows.append(
            [key.split("_")[0], f"{s['min']:,}", *(f"{s[p]:,.1f}" for p in ("p50", "p90", "p99"))]
            + [f"{s['max']:,}", f"{s['mean']:,.2f}"]
        )
    print(_text_table(rows))
    examples = ", ".join(stats["answer_start_mismatch_examples"])
    print(f"answer_start mismatches: {stats['answer_start_mismatches']}" + (f" (e.g. {examples})" if examples else ""))
    if stats["ambiguous_answers"]:
        examples = ", ".join(stats["ambiguous_answer_examples"])
        print(
            f"answers found more than once in their context (the first taken): {stats['ambiguous_answers']} "
            f"(e.g. {examples})"
        )
    return 0


def _text_table(rows: list[list[str]]) -> str:
    """Rows as aligned columns (the first left, the others right), each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    )


def cmd_run(args: argparse.Namespace) -> int:
    from jsquad_lora.recipe.job import main_job

    main_job(
        args.config, args.output, args.overrides, resume=args.resume, overwrite=args.overwrite, stages=args.command
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from jsquad_lora.report.render import write_report

    for path in write_report([Path(d) for d in args.runs], Path(args.output)):
        print(path)
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from jsquad_lora.tuned.ask import ask, write_question

    context = args.context
    if args.context_file is not None:
        try:
            context = Path(args.context_file).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise InputError(
                args.context_file, f"not UTF-8 text (byte {err.start})", fix="convert it, e.g. `iconv -t UTF-8`"
            ) from None
    if args.answer is not None:  # a task=question run: the question whose answer this is
        written = write_question(Path(args.run), context, args.answer, decoding=args.decoding)
        print(json.dumps(written, ensure_ascii=False) if args.json else written["question"])
        return 0
    found = ask(Path(args.run), context, args.question, decoding=args.decoding)
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
    elif found["answer"] is None:
        print(f"(no answer: {found['reason']})", file=sys.stderr)
    else:
        print(found["answer"])
    return 0


def _int_in(low: int, high: int):
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {brief(text)}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


def cmd_serve(args: argparse.Namespace) -> int:
    from jsquad_lora.tuned.serve import serve

    serve(
        Path(args.run),
        args.host,
        args.port,
        allow_hosts=args.allow_host,
        api_key=args.api_key,
        max_batch=args.max_batch,
        queue_size=args.queue_size,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from jsquad_lora.tuned.export import export_run

    print(
        export_run(
            Path(args.run),
            Path(args.output),
            merge=args.merge,
            overwrite=args.overwrite,
            format=args.format,
            quantize=args.quantize,
            llama_cpp=args.llama_cpp,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jsquad-lora", description="LoRA fine-tuning and honest evaluation of Japanese causal LLMs on JSQuAD."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score a predictions file against a JSQuAD data file")
    p.add_argument("data", help="a data source: a file, a directory (its valid split), hf:ID, SRC:SPLIT")
    p.add_argument("predictions", help='{"<id>": "<answer>"} JSON, or this tool\'s predictions JSONL')
    p.add_argument("--metric", choices=tuple(SCORERS), default="jglue")
    p.add_argument(
        "--ignore-unknown-ids", action="store_true", help="skip predictions whose id is not in DATA instead of failing"
    )
    p.add_argument("--ids", help="score only these questions of DATA: a JSON list of ids (a run's eval_ids.json)")
    source_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("prompt", help="print the prompt the model sees for one question")
    p.add_argument("data")
    p.add_argument("--id", required=True)
    p.add_argument("--template", choices=tuple(TEMPLATES), default="seed")
    p.add_argument(
        "--with-answer", action="store_true", help="append the first gold answer (the training text, without EOS)"
    )
    p.add_argument("--fewshot", type=int, default=0, help="number of few-shot examples")
    p.add_argument("--train", help="where few-shot examples come from (default: DATA itself)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--tokenizer", help="tokenizer (hub id or path), for templates that need one (chat)")
    p.add_argument(
        "--token-ids",
        action="store_true",
        help="print the prompt's token ids (one JSON list, no EOS), as training and evaluation feed them to the model "
        "(with --with-answer: the answer's ids appended, as in training); needs --tokenizer",
    )
    source_options(p)
    p.set_defaults(func=cmd_prompt)

    p = sub.add_parser("stats", help="counts and length percentiles of a data file")
    p.add_argument("data")
    p.add_argument("--json", action="store_true")
    source_options(p)
    p.set_defaults(func=cmd_stats)

    for name, text in (
        ("run", "the main job: evaluate before, train, evaluate after, report"),
        ("train", "train only (and save the adapter)"),
        ("evaluate", "evaluate only (before, or the run's trained adapter if present)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--config", help=f"YAML config or preset name (default: the preset {DEFAULT_CONFIG.removesuffix('.yaml')})"
        )
        p.add_argument("--output", help="run directory (default: runs/<config name>)")
        p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
        p.add_argument("--overwrite", action="store_true", help="replace a finished run in --output")
        p.add_argument(
            "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3 lora.r=16"
        )
        p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="compare run directories in one report")
    p.add_argument("runs", nargs="+")
    p.add_argument("--output", default="report", help="directory for report.md, report.html and charts")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "ask", help="answer one question about one passage with a trained run (or write one: a task=question run)"
    )
    p.add_argument("--run", required=True, help="a run directory")
    passage = p.add_mutually_exclusive_group(required=True)
    passage.add_argument("--context", help="the passage or document (a long one is read in overlapping windows)")
    passage.add_argument("--context-file", metavar="PATH", help="read the passage from a UTF-8 text file")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--question", help="the question to answer (a task=answer run)")
    given.add_argument(
        "--answer", help="a task=question run: the answer (in the passage) to write a question for; prints the question"
    )
    p.add_argument("--decoding", choices=tuple(DECODING_MODES), default=None, help="default: the run's eval.decoding")
    p.add_argument(
        "--json",
        action="store_true",
        help='print the whole answer object ("answer" null and a "reason" on abstaining); with --answer '
        '{"question", "task"}',
    )
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("serve", help="answer questions over HTTP (an API and a page) with a trained run")
    p.add_argument("--run", required=True, help="a run directory")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: this machine only; 0.0.0.0 lets anyone who reaches it use the model)",
    )
    p.add_argument("--port", type=_int_in(1, 65535), default=8000)
    p.add_argument(
        "--max-batch", type=_int_in(1, 4096), default=32, help="most questions answered by one generation call"
    )
    p.add_argument(
        "--queue-size", type=_int_in(1, 100_000), default=64, help="questions that may wait; more get HTTP 503"
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable), e.g. a reverse proxy's name; "
        "'*' answers any Host (only behind a proxy that checks it)",
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every /v1/ route (default: $JSQUAD_LORA_API_KEY; unset or "
        "empty: no key); prefer the variable, as a command line is visible to other users in ps",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "export",
        help="write a run's adapter (or merged model) with a model card for transformers, or a GGUF file for "
        "llama.cpp and Ollama",
    )
    p.add_argument("run", help="a run directory")
    p.add_argument("--output", required=True, help="a new or empty directory")
    p.add_argument("--merge", action="store_true", help="the base model with the adapter merged in (a whole model)")
    p.add_argument(
        "--format",
        choices=["safetensors", "gguf"],
        default="safetensors",
        help="safetensors (transformers, the default) or gguf: the merged model as one .gguf file for llama.cpp, "
        "with an Ollama Modelfile beside it",
    )
    p.add_argument(
        "--quantize",
        choices=["f32", "f16", "q8_0"],  # gguf_export.QUANTIZATIONS
        default=None,
        help="with --format gguf: the type of the matrices (default f16; norms stay float32)",
    )
    p.add_argument(
        "--llama-cpp",
        default=None,
        metavar="PATH",
        help="with --format gguf: llama.cpp's converter, from a llama.cpp checkout or llama-cpp-python's source "
        "(unpacked, or its .tar.gz); default $JSQUAD_LORA_LLAMA_CPP. Every family but Gemma 3 needs it; Gemma 3 "
        "uses it when given",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    p.set_defaults(func=cmd_export)

    add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader that stopped early (`| head`) is handled below
        return code
    except BrokenPipeError:
        # the program reading our output closed it (`stats --json | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer that a closed pipe stopped
    except InputError as err:
        print(err.render(), file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be read or written (missing, a directory, EACCES, EIO, read-only)
        if err.filename is None:
            raise
        where = f"{err.filename} → {err.filename2}" if err.filename2 else err.filename
        print(
            f"error: {where}: {err.strerror or err}\n  fix: check that the path exists, is the right kind "
            "(file or directory) and that this user may read (or write) it",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted; `--resume` continues from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
