"""GGUF export through llama.cpp's own converter (`convert_hf_to_gguf.py`), for the families Gemma 3's
hand-written writer (`tuned/gguf_export.py`) does not cover: Qwen2, GPT-NeoX (rinna), Llama and whatever
else the converter knows.

Where the converter is: `export --llama-cpp PATH` or `$JSQUAD_LORA_LLAMA_CPP`, one of
- a llama.cpp checkout (it holds `convert_hf_to_gguf.py` and `gguf-py/`);
- llama-cpp-python's source, unpacked (`vendor/llama.cpp/`);
- llama-cpp-python's source archive itself (`pip download llama-cpp-python --no-binary :all: --no-deps`),
  unpacked once into the cache (`$JSQUAD_LORA_CACHE/llama-cpp/`).

The merged model is saved as a model directory beside the output, and the converter runs on it in a child
process, with llama.cpp's own gguf-py first on the path as its script puts it. Two things the converter
lacks are added there, by hand (`_patch`), and say so in its log:
- a GPT-NeoX model with a sentencepiece tokenizer (rinna's japanese-gpt-neox): the converter writes every
  GPT-NeoX vocabulary as byte-level BPE from tokenizer.json; here the sentencepiece model is written as the
  converter writes T5's: a unigram model (rinna's) as llama.cpp's "t5" (Viterbi) tokenizer with its
  normaliser, so that llama.cpp splits text into the run's pieces; a BPE model as "llama";
- a byte-level BPE whose pre-tokenizer the converter does not know by its hash (a retrained or extended
  vocabulary): named from tokenizer.json's pre-tokenizer where that is one llama.cpp implements (`PRE_TOKENIZERS`).
A tokenizer llama.cpp has no counterpart for (the tiny model's characters) is refused before any work.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from jsquad_lora.errors import InputError

log = logging.getLogger(__name__)
SCRIPT = "convert_hf_to_gguf.py"
ENV = "JSQUAD_LORA_LLAMA_CPP"
FETCH = "pip download llama-cpp-python --no-binary :all: --no-deps -d DIR"
#: tokenizer.json pre-tokenizer regex (a Split before a ByteLevel without its own regex) → llama.cpp's name:
#: Qwen2's splits digits one by one, Llama 3's in threes
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {_WORDS + r"\p{N}" + _REST: "qwen2", _WORDS + r"\p{N}{1,3}" + _REST: "llama-bpe"}
#: a ByteLevel pre-tokenizer with its own regex is GPT-2's
GPT2 = "gpt-2"
ADD_BOS = "JSQUAD_LORA_GGUF_ADD_BOS"  # tells the child process the run's add_bos_token


def find_converter(path: str | Path | None, model_type: str | None = None) -> Path:
    """The directory holding llama.cpp's converter script, from `path` (or $JSQUAD_LORA_LLAMA_CPP): a llama.cpp
    checkout, llama-cpp-python's unpacked source, or its source archive (unpacked once into the cache)."""
    given = path or os.environ.get(ENV)
    if not given:
        raise InputError(
            "--llama-cpp",
            f"a {model_type or 'model'} GGUF file is written by llama.cpp's converter ({SCRIPT}) "
            "(this tool writes Gemma 3 only), and none was given",
            fix=f"pass --llama-cpp PATH (or set ${ENV}): a llama.cpp checkout, or llama-cpp-python's source "
            f"archive ({FETCH}); or export without --format gguf (safetensors)",
        )
    source = Path(given).expanduser()
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        source = _unpacked(source)
    for directory in (source, source / "vendor" / "llama.cpp"):
        if (directory / SCRIPT).is_file():
            return directory.resolve()
    raise InputError(
        source,
        f"no {SCRIPT} here or in vendor/llama.cpp/",
        fix=f"pass a llama.cpp checkout, or llama-cpp-python's source archive ({FETCH})",
    )


def _unpacked(archive: Path) -> Path:
    """The source archive unpacked once into the cache (into a temporary directory renamed into place)."""
    from jsquad_lora.util.cache import cache_dir
    from jsquad_lora.util.files import atomic_dir

    target = cache_dir() / "llama-cpp" / archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
    if not target.is_dir():
        log.info("unpacking %s into %s", archive, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_dir(target) as tmp, tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (OSError, tarfile.TarError) as err:
            raise InputError(archive, f"cannot unpack ({err})", fix=f"download it again: {FETCH}") from err
    inner = [p for p in target.iterdir() if p.is_dir()]
    return inner[0] if len(inner) == 1 else target


def check_tokenizer(tokenizer) -> None:
    """Refuse, before any work, a tokenizer llama.cpp has no counterpart for."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    kind = json.loads(backend.to_str())["model"]["type"] if backend is not None else None
    if kind in ("WordLevel", "WordPiece"):
        raise InputError(
            "model (tokenizer)",
            f"a {kind} tokenizer (the tiny model's characters) has no llama.cpp counterpart",
            fix="export without --format gguf (safetensors)",
        )


def stage(model, tokenizer, directory: Path) -> Path:
    """The merged model saved as the model directory the converter reads (safetensors, tokenizer, config)."""
    directory.mkdir(parents=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    # the converter reads a sentencepiece model as tokenizer.model; T5Tokenizer (rinna's) saves spiece.model
    if (directory / "spiece.model").is_file() and not (directory / "tokenizer.model").exists():
        shutil.copyfile(directory / "spiece.model", directory / "tokenizer.model")
    return directory


def convert(
    converter: Path, model_dir: Path, outfile: Path, outtype: str, metadata: dict[str, str], add_bos: bool
) -> None:
    """Run the converter (with `_patch`) on `model_dir`, writing `outfile` as `outtype` (f32, f16, q8_0).
    `add_bos`: whether the run's prompts start with the BOS token, written into the file as llama.cpp's
    add_bos_token (and add_eos_token false: the run's prompts never end with one), whatever its default."""
    overrides = {key: value for key, value in metadata.items() if key != "general.license"}
    (model_dir / "gguf-metadata.json").write_text(json.dumps(overrides), encoding="utf-8")
    if license := metadata.get("general.license"):  # the converter reads the license from the model card only
        (model_dir / "README.md").write_text(f"---\nlicense: {license}\n---\n", encoding="utf-8")
    argv = [str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    argv += ["--metadata", str(model_dir / "gguf-metadata.json")]
    command = [sys.executable, "-m", "jsquad_lora.tuned.llama_cpp_convert", str(converter), *argv]
    log.info("llama.cpp's converter: %s", " ".join(command[3:]))
    env = dict(os.environ, **{ADD_BOS: "1" if add_bos else "0"})
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not outfile.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise InputError(
            converter / SCRIPT,
            f"the converter failed (exit {done.returncode}):\n{tail}",
            fix="export without --format gguf (safetensors), or pass --llama-cpp a newer llama.cpp",
        )
    for line in done.stderr.splitlines():
        if "jsquad-lora:" in line:
            log.info("%s", line.split("jsquad-lora:", 1)[1].strip())


# ---------------------------------------------------------------- the child process


def _pre_tokenizer(model_dir: Path) -> str | None:
    """llama.cpp's name for tokenizer.json's byte-level pre-tokenizer, where it implements that one."""
    try:
        pre = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))["pre_tokenizer"] or {}
    except (OSError, ValueError, KeyError):
        return None
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        return GPT2
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        if not steps[1].get("use_regex", True):
            return PRE_TOKENIZERS.get((steps[0].get("pattern") or {}).get("Regex"))
    return None


def _patch(namespace: dict, add_bos: bool) -> None:
    """What the converter lacks (see the module docstring), on its classes: `namespace` maps class names to
    classes, from its `conversion` package (llama.cpp since 2026) or its single script (before). And the
    run's add_bos_token / add_eos_token, written whatever the tokenizer's files say."""
    import gguf

    add_to_gguf, written = gguf.SpecialVocab.add_to_gguf, set()

    def with_run_specials(self, gw, *args, **kwargs):
        if id(gw) not in written:  # once a file: some families add a second SpecialVocab
            self.add_special_token.update(bos=add_bos, eos=False)
            written.add(id(gw))
        else:  # written once already: a second add would be a duplicate key
            for kind in ("bos", "eos"):
                self.add_special_token.pop(kind, None)
        return add_to_gguf(self, gw, *args, **kwargs)

    gguf.SpecialVocab.add_to_gguf = with_run_specials
    text_model, neox, t5 = namespace.get("TextModel"), namespace.get("GPTNeoXModel"), namespace.get("T5Model")
    if text_model is not None:
        known = text_model.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer):
            try:
                return known(self, tokenizer)
            except NotImplementedError:
                if (name := _pre_tokenizer(Path(self.dir_model))) is None:
                    raise
                print(f"jsquad-lora: pre-tokenizer {name!r}, from tokenizer.json (hash unknown)", file=sys.stderr)
                return name

        text_model.get_vocab_base_pre = get_vocab_base_pre
    if neox is not None:
        byte_level = neox.set_vocab

        def set_vocab(self):
            if not (Path(self.dir_model) / "tokenizer.model").is_file():
                return byte_level(self)
            # the converter's T5 vocabulary: a unigram model (rinna's) as llama.cpp's Viterbi "t5" tokenizer with
            # the model's normaliser, a sentencepiece BPE model as "llama"; llama.cpp's "llama" tokenizer merges
            # pieces by score and splits a unigram model's text otherwise than sentencepiece does
            print("jsquad-lora: GPT-NeoX vocabulary written from the sentencepiece model", file=sys.stderr)
            if t5 is None:
                return self._set_vocab_sentencepiece()
            t5.set_vocab(self)
            # the unknown piece's id where no tokenizer file named it: llama.cpp's "t5" default is T5's (2)
            if not any(gguf.Keys.Tokenizer.UNK_ID in kv for kv in self.gguf_writer.kv_data):
                from sentencepiece import SentencePieceProcessor

                pieces = SentencePieceProcessor(model_file=str(Path(self.dir_model) / "tokenizer.model"))
                self.gguf_writer.add_unk_token_id(pieces.unk_id())

        neox.set_vocab = set_vocab
        parameters = neox.set_gguf_parameters

        def set_gguf_parameters(self):
            # transformers 5 keeps GPT-NeoX's rotary fraction and base in rope_parameters; the converter reads
            # rotary_pct and writes no base (llama.cpp's default, 10000): both from rope_parameters here
            rope = self.hparams.get("rope_parameters") or {}
            self.hparams.setdefault("rotary_pct", rope.get("partial_rotary_factor", 1.0))
            parameters(self)
            if (base := rope.get("rope_theta", self.hparams.get("rotary_emb_base"))) is not None:
                self.gguf_writer.add_rope_freq_base(float(base))

        neox.set_gguf_parameters = set_gguf_parameters


def _child(converter: Path, argv: list[str]) -> None:
    import importlib
    import importlib.util

    sys.path.insert(0, str(converter))
    sys.path.insert(1, str(converter / "gguf-py"))  # llama.cpp's own gguf, as its script does
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", converter / SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    namespace = dict(vars(script))
    if (converter / "conversion").is_dir():
        for module in ("base", "gptneox", "t5"):
            namespace.update(vars(importlib.import_module(f"conversion.{module}")))
    _patch(namespace, os.environ.get(ADD_BOS) == "1")
    sys.argv = [SCRIPT, *argv]
    script.main()


if __name__ == "__main__":
    _child(Path(sys.argv[1]), sys.argv[2:])
