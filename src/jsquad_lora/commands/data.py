"""`jsquad-lora data ...`: the subcommands that write a source's questions as SQuAD JSON, and the options
(`--columns`, `--encoding`) every command that reads a source takes (data/formats.py lists the sources).

A data subcommand is one `@data_command(...)` handler here: its name, help and own arguments sit on it,
and `add_data_parser` gives every one of them SRC, `--split` and the source options. Each handler
parses and wires; what it does is in data/.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jsquad_lora.errors import brief

#: `jsquad-lora data`'s help: it names the subcommands (a new one is named here too)
DATA_HELP = (
    "write a source's questions as SQuAD JSON files (convert, split), evaluation sets built from them "
    "(build-long, build-unanswerable), or questions generated from documents (generate)"
)


def read_source(args: argparse.Namespace, data: str, split: str = "valid"):
    """A DATA argument's questions, read with the command's --columns / --encoding."""
    from jsquad_lora.data.formats import read_split

    return read_split(data, split, columns=args.columns, encoding=args.encoding)


def source_options(p: argparse.ArgumentParser) -> None:
    """--columns and --encoding, for a command that reads a source (data/formats.py lists the sources)."""
    p.add_argument(
        "--columns",
        type=parse_columns,
        help="a table's column names: context=本文,question=質問,answer=回答[,id=..,document=..]",
    )
    p.add_argument("--encoding", help="a CSV/TSV file's text encoding (default UTF-8, BOM or not; cp932: Shift_JIS)")


def parse_columns(text: str) -> dict[str, str]:
    """An argparse type: `key=column,key=column` (keys in COLUMN_NAMES, each once) as a dict."""
    from jsquad_lora.data.rows import COLUMN_NAMES

    example = "e.g. --columns context=本文,question=質問,answer=回答"
    columns: dict[str, str] = {}
    for part in text.split(","):
        key, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not key or not column:
            raise argparse.ArgumentTypeError(f"{brief(part)} is not key=column ({example})")
        if key not in COLUMN_NAMES:
            raise argparse.ArgumentTypeError(f"unknown key {brief(key)} (known: {', '.join(COLUMN_NAMES)})")
        if key in columns:
            raise argparse.ArgumentTypeError(f"{brief(key)} is given twice")
        columns[key] = column
    return columns


def _fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {brief(text)}") from None
    if not 0 < value < 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (e.g. 0.1)")
    return value


@dataclass(frozen=True)
class DataCommand:
    """One `jsquad-lora data NAME`: its help, the arguments of its own (between SRC and --split), its handler."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: name → subcommand, in the order `data --help` lists them (the order they are declared below)
DATA_COMMANDS: dict[str, DataCommand] = {}


def data_command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Declares the handler below it as `jsquad-lora data NAME`."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        DATA_COMMANDS[name] = DataCommand(help, arguments, run)
        return run

    return register


def add_data_parser(sub) -> None:
    """`data` and its subcommands, added to the top-level subparsers `sub`."""
    data_sub = sub.add_parser("data", help=DATA_HELP).add_subparsers(dest="data_command", required=True)
    for name, command in DATA_COMMANDS.items():
        p = data_sub.add_parser(name, help=command.help)
        p.add_argument("source", metavar="SRC", help="a data file, a directory, hf:ID, jglue:v1.3, ...")
        command.arguments(p)
        p.add_argument("--split", default="train", metavar="NAME", help="the split of SRC to read (default: train)")
        source_options(p)
        p.set_defaults(func=command.run)


def _output_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, metavar="OUT.json", help="the SQuAD JSON file to write")


def _output_file_and_seed(p: argparse.ArgumentParser) -> None:
    _output_file(p)
    p.add_argument("--seed", type=int, default=0, metavar="S", help="the draws' seed (default 0)")


def _split_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--by", choices=("document",), required=True, help="what stays whole: document (title, else context)"
    )
    p.add_argument(
        "--eval-fraction", type=_fraction, required=True, metavar="F", help="about this share of the questions"
    )
    p.add_argument("--seed", type=int, required=True, metavar="S")
    p.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="a new or empty directory, or an earlier split's, for train.json and eval.json",
    )


def _dropped(dropped: dict[str, int]) -> str:
    """A summary's dropped questions: their count, and why (a count per reason)."""
    total = sum(dropped.values())
    reasons = "; ".join(f"{count} {reason}" for reason, count in dropped.items())
    return f"{total} questions dropped" + (f" ({reasons})" if reasons else "")


@data_command("convert", "read a source (validated) and write it as one SQuAD v1.1 JSON file", _output_file)
def cmd_data_convert(args: argparse.Namespace) -> int:
    from jsquad_lora.data.write import check_output_file, write_squad_json

    check_output_file(args.output)  # before reading: a wrong --output fails fast
    split = read_source(args, args.source, args.split)
    path = write_squad_json(Path(args.output), split.questions, source=split.path)
    print(f"{path}: {len(split)} questions, {len({q.title for q in split.questions})} articles")
    return 0


@data_command("split", "split a source's questions by document into train.json and eval.json", _split_arguments)
def cmd_data_split(args: argparse.Namespace) -> int:
    from jsquad_lora.data.write import check_split_dir, document_of, write_split

    check_split_dir(args.output)  # before reading: a user's folder is refused at once, untouched
    split = read_source(args, args.source, args.split)
    written = write_split(Path(args.output), split.questions, args.eval_fraction, args.seed, source=split.path)
    for path, questions in zip(written[:2], written[2:]):
        print(f"{path}: {len(questions)} questions, {len({document_of(q) for q in questions})} documents")
    return 0


@data_command(
    "build-long",
    "join each article's consecutive passages into documents of 2,000-6,000 characters, "
    "its questions kept with their answers' offsets moved (docs/own-data.md)",
    _output_file_and_seed,
)
def cmd_data_build_long(args: argparse.Namespace) -> int:
    from jsquad_lora.data.derived import long_documents
    from jsquad_lora.data.write import check_output_file, write_squad_json

    check_output_file(args.output)  # before reading: a wrong --output fails fast
    split = read_source(args, args.source, args.split)
    questions, summary = long_documents(split.questions, args.seed, source=split.path)
    path = write_squad_json(Path(args.output), questions, source=split.path)
    chars, wrong = summary["chars"], summary["start_mismatches"]
    # an offset already wrong in the source stays wrong, moved as the others: said only where there are some
    mismatched = f", {wrong} answer offsets wrong in the source (moved as they were)" if wrong else ""
    print(
        f"{path}: {summary['documents']} documents, {summary['questions']} questions kept, "
        f"{_dropped(summary['dropped'])}, document characters min {chars['min']} / median {chars['median']:g} / "
        f"max {chars['max']}{mismatched} (seed {args.seed})"
    )
    return 0


@data_command(
    "build-unanswerable",
    "each question, and as <id>#noans asked of another passage of its article without its answers "
    "(no answers, is_impossible), 1:1 (docs/own-data.md)",
    _output_file_and_seed,
)
def cmd_data_build_unanswerable(args: argparse.Namespace) -> int:
    from jsquad_lora.data.derived import unanswerable_mix
    from jsquad_lora.data.write import check_output_file, write_squad_json

    check_output_file(args.output)  # before reading: a wrong --output fails fast
    split = read_source(args, args.source, args.split)
    questions, summary = unanswerable_mix(split.questions, args.seed, source=split.path)
    path = write_squad_json(Path(args.output), questions, source=split.path)
    print(
        f"{path}: {summary['answerable']} answerable, {summary['unanswerable']} unanswerable (#noans), "
        f"{_dropped(summary['dropped'])} (seed {args.seed})"
    )
    return 0


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    _output_file(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--generator", metavar="RUN_DIR", help="a question-generation run of this tool (task=question)")
    where.add_argument(
        "--generator-url",
        metavar="URL",
        help="an OpenAI-compatible endpoint (…/v1): llama.cpp's server, vLLM, Ollama, serve (the passages are sent)",
    )
    p.add_argument("--generator-model", metavar="NAME", help="the endpoint's model name (with --generator-url)")
    p.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", metavar="VAR", help="the environment variable holding its key"
    )
    p.add_argument(
        "--candidates",
        choices=("mecab", "generator"),
        default="mecab",
        help="answers from MeCab (numbers, dates, names, noun phrases; default) or chosen by the endpoint",
    )
    p.add_argument("--filter-run", metavar="RUN_DIR", help="a QA run: keep a pair only where it finds the answer")
    p.add_argument(
        "--filter-f1", type=float, metavar="F", help="with --filter-run: also keep where its answer's char F1 >= F"
    )
    p.add_argument("--questions-per-passage", type=int, default=3, metavar="N", help="candidates per passage (3)")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="SRC",
        help="evaluation data whose passages must not be generated on, beside the default dev data (repeatable)",
    )
    p.add_argument(
        "--include-source-questions",
        action="store_true",
        help="DOCS a QA source: write its own questions too (left out by default)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="the candidates' draw (default 0)")


@data_command(
    "generate",
    "generate checked questions from documents (DOCS: a folder of .txt/.md, a table of documents, or a QA "
    "source's passages) with a question-generation run or a chat endpoint (docs/generate.md)",
    _generate_arguments,
)
def cmd_data_generate(args: argparse.Namespace) -> int:
    from jsquad_lora.data.write import check_output_file
    from jsquad_lora.errors import InputError
    from jsquad_lora.questions.build import generate_questions
    from jsquad_lora.questions.generators import EndpointGenerator, RunGenerator
    from jsquad_lora.questions.roundtrip import RoundTripFilter

    check_output_file(args.output)
    if args.questions_per_passage < 1:
        raise InputError("--questions-per-passage", f"must be positive (got {args.questions_per_passage})")
    if args.generator_url and not args.generator_model:
        raise InputError("--generator-model", "is needed with --generator-url", fix="name the endpoint's model")
    if args.filter_f1 is not None and not args.filter_run:
        raise InputError("--filter-f1", "has no effect without --filter-run", fix="add --filter-run RUN_DIR")
    # the runs are checked (and loaded) before any document is read
    generator = (
        RunGenerator(args.generator)
        if args.generator
        else EndpointGenerator(args.generator_url, args.generator_model, api_key_env=args.api_key_env)
    )
    filter_run = RoundTripFilter(args.filter_run, args.filter_f1) if args.filter_run else None
    source = args.source if ":" in args.source or args.split == "train" else f"{args.source}:{args.split}"
    summary = generate_questions(
        source,
        Path(args.output),
        generator=generator,
        candidates=args.candidates,
        filter_run=filter_run,
        per_passage=args.questions_per_passage,
        exclude=args.exclude,
        seed=args.seed,
        columns=args.columns,
        encoding=args.encoding,
        include_source_questions=args.include_source_questions,
    )
    if summary:
        print(
            f"{summary['output']}: {summary['kept']} questions kept of {summary['proposed']} proposed on "
            f"{summary['passages']} passages (rejected: "
            + ", ".join(f"{k} {v}" for k, v in summary["rejected"].items() if v)
            + ")"
        )
    return 0
