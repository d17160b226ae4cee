"""`jsquad-lora export`: a finished run's trained model as a directory that plain transformers (and
peft, for an adapter) load, with a model card.

    adapter (default)  the run's LoRA adapter (adapter_config.json + adapter_model.safetensors) and
                       tokenizer; its base_model_name_or_path is the base the run trained on (an
                       absolute path for a local or built-in base), so from_pretrained finds it
    --merge            the base with the adapter folded in (peft `merge_and_unload`): a whole model
                       (config.json + model.safetensors) and tokenizer, in `model.dtype`
    --format gguf      the merged model as ONE GGUF file (`<run>-<quantize>.gguf`: weights, tokenizer and chat
                       template) for llama.cpp and transformers (`gguf_file=`), with an Ollama `Modelfile` beside
                       it (`tuned/modelfile.py`); --quantize f32, f16 (default), q8_0. Gemma 3 is written by
                       `tuned/gguf_export.py`; every other family (or Gemma with --llama-cpp) by llama.cpp's own
                       converter (`tuned/llama_cpp_convert.py`, --llama-cpp PATH or $JSQUAD_LORA_LLAMA_CPP)
A run that fine-tuned every weight (`lora.enabled: false`) has no adapter: all give its whole model.
Beside the weights: README.md (the model card: base model and its license, recipe, dev scores, how
to load and prompt it), jsquad-lora-config.yaml (the run's config) and a marker file. Everything is
written in a temporary directory beside OUTPUT, renamed into place at the end (`files.atomic_dir`);
OUTPUT must be new, empty, or (with --overwrite) an earlier export: nothing else is ever replaced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from jsquad_lora.config.schema import RunConfig
from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError
from jsquad_lora.evaluate.scorers import SCORERS
from jsquad_lora.generate.decoding import decoding_config
from jsquad_lora.model.source import model_source
from jsquad_lora.tuned import gguf_export, llama_cpp_convert, modelfile
from jsquad_lora.tuned.loaded import check_run, load_model
from jsquad_lora.util.files import atomic_dir, holds_marker, out_of_space, write_text

log = logging.getLogger(__name__)
EXPORT_MARKER = ".jsquad-lora-export"
CONFIG_NAME = "jsquad-lora-config.yaml"
#: model types whose GGUF files transformers reads (`transformers.integrations.ggml`; not gpt_neox)
GGUF_IN_TRANSFORMERS = ("gemma3_text", "gemma3", "qwen2", "llama", "mistral", "qwen3", "phi3", "gemma2")
EXAMPLE = Question(
    "example",
    "",
    "梅雨は、東アジアの広範囲においてみられる特有の気象現象で、5月から7月にかけて毎年巡ってくる曇りや雨の多い期間のことである。",
    "梅雨がみられるのはどこか。",
    ("東アジアの広範囲",),
    (4,),
)


def export_run(
    run_dir: Path,
    output: Path,
    *,
    merge: bool = False,
    overwrite: bool = False,
    format: str = "safetensors",
    quantize: str | None = None,
    llama_cpp: str | Path | None = None,
) -> Path:
    """Write the run's adapter (or, `merge`, the merged model; `format="gguf"`, the merged model as one GGUF
    file in `quantize` with an Ollama Modelfile; `llama_cpp`: where llama.cpp's converter is) with tokenizer and
    model card to `output`."""
    run_dir, output = Path(run_dir), Path(output)
    cfg = check_run(run_dir)
    _check_options(format, quantize, llama_cpp)
    _check_target(output, overwrite)
    metrics = _read_metrics(run_dir)
    kind = "merged" if (merge or format == "gguf") and cfg.lora.enabled else "adapter" if cfg.lora.enabled else "full"
    adapter_bytes = sum(p.stat().st_size for p in (run_dir / "adapter").rglob("*") if p.is_file())
    # a GGUF export is checked (architecture, tokenizer, prompt) and its model merged before anything is written
    gguf = _GgufExport.prepare(cfg, run_dir, quantize or "f16", llama_cpp) if format == "gguf" else None
    with (
        out_of_space(
            f"the export ({kind}{', gguf' if gguf else ''})",
            output,
            fix="free space there, or pass an --output on a disk with more room; nothing was written to "
            f"{output} (the partial export was removed)",
            needed=None if kind == "merged" else adapter_bytes,
        ),
        atomic_dir(output) as tmp,
    ):
        if gguf:
            log.info("writing %s (%s)", gguf.name, gguf.quantize)
            gguf.write(tmp, cfg)
        elif kind == "merged":
            log.info("merging the adapter into the base model (%s)", cfg.model.dtype)
            model, tokenizer = load_model(run_dir, _unquantized(cfg))
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        else:
            if merge:
                log.info("the run fine-tuned every weight: its adapter/ is the whole model already")
            for path in sorted((run_dir / "adapter").iterdir()):
                if path.is_file() and path.name != "README.md":  # peft's placeholder card: ours replaces it
                    shutil.copyfile(path, tmp / path.name)
        base = None
        if kind == "adapter":
            base = _base_location(cfg, run_dir)
            adapter_config = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
            adapter_config["base_model_name_or_path"] = base
            write_text(tmp / "adapter_config.json", json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        example = gguf.example if gguf else _example_prompt(cfg, tmp)
        write_text(tmp / "README.md", model_card(cfg, metrics, kind, run_dir, base, example, gguf))
        shutil.copyfile(run_dir / "config.yaml", tmp / CONFIG_NAME)
        write_text(tmp / EXPORT_MARKER, f"exported by jsquad-lora from {run_dir.resolve()}\n")
    log.info("exported %s (%s) to %s", run_dir, kind, output)
    return output


def _check_options(format: str, quantize: str | None, llama_cpp) -> None:
    if format not in ("safetensors", "gguf"):
        raise InputError("--format", f"unknown format {format!r}", fix="pass --format safetensors or --format gguf")
    if llama_cpp is not None and format != "gguf":
        raise InputError(
            "--llama-cpp", "only a GGUF export uses llama.cpp", fix="add --format gguf, or drop --llama-cpp"
        )
    if quantize is not None and format != "gguf":
        raise InputError("--quantize", "only a GGUF export is quantized", fix="add --format gguf, or drop --quantize")
    if quantize is not None and quantize not in gguf_export.QUANTIZATIONS:
        choices = ", ".join(gguf_export.QUANTIZATIONS)
        raise InputError("--quantize", f"unknown type {quantize!r}", fix=f"pass one of {choices}")


@dataclasses.dataclass
class _GgufExport:
    """A GGUF export, everything checked and computed before anything is written: the merged model and
    its vocabulary (Gemma's own writer) or llama.cpp's converter, the file name, the Modelfile and the sample
    prompt as llama.cpp is given it."""

    name: str
    quantize: str
    model: Any
    tokenizer: Any
    vocabulary: gguf_export.Vocabulary | None  # None: llama.cpp's converter writes the file
    converter: Path | None
    add_bos: bool
    modelfile_text: str
    turn: modelfile.ChatTurn
    example: str
    stops: list[str]

    @classmethod
    def prepare(cls, cfg: RunConfig, run_dir: Path, quantize: str, llama_cpp: str | Path | None) -> _GgufExport:
        from transformers import AutoConfig

        from jsquad_lora.encoding.tokens import prompt_ids
        from jsquad_lora.generate.greedy import special_ids
        from jsquad_lora.prompts.fewshot import make_renderer

        trained = str(run_dir / "adapter") if not cfg.lora.enabled else _base_location(cfg, run_dir)
        try:
            config = AutoConfig.from_pretrained(trained)
        except (OSError, ValueError):  # checked below, once the model is loaded
            config = None
        # Gemma 3 through the writer of this tool unless llama.cpp is asked for; every other family through
        # llama.cpp's converter, found before a model is loaded
        converter = None
        if llama_cpp is not None or (config is not None and config.model_type not in gguf_export.ARCHITECTURES):
            converter = llama_cpp_convert.find_converter(llama_cpp, getattr(config, "model_type", None))
        elif config is not None:
            gguf_export.check_architecture(config)  # before a model of another architecture is loaded
        if cfg.lora.enabled:
            log.info("merging the adapter into the base model (%s)", cfg.model.dtype)
        model, tokenizer = load_model(run_dir, _unquantized(cfg))
        if converter is None and model.config.model_type not in gguf_export.ARCHITECTURES:
            converter = llama_cpp_convert.find_converter(llama_cpp, model.config.model_type)
        render = make_renderer(cfg, tokenizer, ())
        if converter is None:
            gguf_export.check_architecture(model.config)
            vocabulary = gguf_export.sentencepiece_vocabulary(tokenizer, model.get_input_embeddings().weight.shape[0])
            add_bos = vocabulary.add_bos
        else:
            llama_cpp_convert.check_tokenizer(tokenizer)
            vocabulary = None
            ids = prompt_ids(tokenizer, render(EXAMPLE))
            add_bos = tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id
        bos = tokenizer.bos_token if add_bos else None
        turn = modelfile.chat_turn(render, bos)
        eos_ids, _ = special_ids(model, tokenizer)
        stops = modelfile.stop_strings(tokenizer, eos_ids, turn, decoding_config(cfg).stop_strings)
        stem = re.sub(r"[^\w.-]+", "-", run_dir.resolve().name).strip("-.") or "model"
        name = f"{stem}-{quantize}.gguf"
        text = modelfile.modelfile(name, turn, stops, cfg.eval.max_new_tokens, cfg.model.max_length)
        example = render(EXAMPLE)
        example = example[len(bos) :] if bos and example.startswith(bos) else example
        return cls(name, quantize, model, tokenizer, vocabulary, converter, add_bos, text, turn, example, stops)

    def write(self, directory: Path, cfg: RunConfig) -> None:
        license = model_source(cfg.model).hf_license  # "gemma" for the built-in Gemma
        license = None if license == "other" else license
        if self.converter is None:
            gguf_export.write_gguf(
                directory / self.name, self.model, self.vocabulary, self.quantize, name=cfg.name, license=license
            )
        else:
            staged = llama_cpp_convert.stage(self.model, self.tokenizer, directory / ".merged-for-llama-cpp")
            metadata = {"general.name": cfg.name} | ({"general.license": license} if license else {})
            llama_cpp_convert.convert(
                self.converter, staged, directory / self.name, self.quantize, metadata, self.add_bos
            )
            shutil.rmtree(staged)
        write_text(directory / "Modelfile", self.modelfile_text)


def _check_target(output: Path, overwrite: bool) -> None:
    """OUTPUT new or empty, or an earlier export with --overwrite; anything else is refused untouched."""
    if not holds_marker(
        output, EXPORT_MARKER, what="an export of this tool", fix="pass --output a new or empty directory"
    ):
        return
    if not overwrite:
        raise InputError(
            output, "an earlier export is here", fix="pass --overwrite to replace it, or a new --output directory"
        )


def _unquantized(cfg: RunConfig) -> RunConfig:
    """The config with the base loaded in `model.dtype`: merging into 8-/4-bit weights would round the adapter."""
    model = dataclasses.replace(cfg.model, load_in_8bit=False, load_in_4bit=False)
    return dataclasses.replace(cfg, model=model)


def _base_location(cfg: RunConfig, run_dir: Path) -> str:
    """Where the adapter's base model is: a tiny run's base/, a built-in or local base's absolute path, or a hub id."""
    from jsquad_lora.model.source import run_base_source

    source = run_base_source(cfg.model, run_dir)
    return str(Path(source).expanduser().resolve()) if Path(source).expanduser().exists() else source


def _read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s: missing or unreadable; the model card will have no scores", path)
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _example_prompt(cfg: RunConfig, directory: Path) -> str:
    """The prompt of a sample question, rendered as the run's evaluation rendered prompts."""
    from transformers import AutoTokenizer

    from jsquad_lora.prompts.fewshot import make_renderer

    return make_renderer(cfg, AutoTokenizer.from_pretrained(directory), ())(EXAMPLE)


def _number(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _scores_table(metrics: dict) -> str:
    head = "| stage | " + " | ".join(f"{s} EM | {s} F1" for s in SCORERS) + " | questions |"
    lines = [head, "|" + "---|" * (2 + 2 * len(SCORERS))]
    for stage in ("before", "after"):
        scores = metrics.get(stage)
        if not isinstance(scores, dict):
            continue
        cells = [_number((scores.get(s) or {}).get(k)) for s in SCORERS for k in ("exact_match", "f1")]
        count = next((c for s in SCORERS if isinstance(c := (scores.get(s) or {}).get("count"), int)), "—")
        lines.append(f"| {stage} tuning | " + " | ".join(cells) + f" | {count} |")
    return "\n".join(lines) if len(lines) > 2 else "No scores: the run has no metrics.json scores."


def model_card(
    cfg: RunConfig,
    metrics: dict,
    kind: str,
    run_dir: Path,
    base: str | None,
    example_prompt: str,
    gguf: _GgufExport | None = None,
) -> str:
    """README.md of an export: Hugging Face model-card metadata, then what the model is and how to use it."""
    card = metrics.get("base_model") if isinstance(metrics.get("base_model"), dict) else {}
    license_text = str(card.get("license") or f"see the model card of {cfg.model.name}")
    meta = {
        "base_model": base or cfg.model.name,
        "library_name": "gguf" if gguf else "peft" if kind == "adapter" else "transformers",
        "license": model_source(cfg.model).hf_license,
        "language": ["ja"],
        "pipeline_tag": "text-generation",
        "tags": ["jsquad", "question-answering", "extractive-qa", "jsquad-lora"]
        + (["lora"] * cfg.lora.enabled)
        + (["gguf"] * bool(gguf)),
    }
    what = {
        "adapter": "a LoRA adapter (load it on its base model)",
        "merged": "the base model with the LoRA adapter merged in (a whole model)",
        "full": "a whole model (every weight was fine-tuned)",
    }[kind]
    if gguf:
        what += f", in one GGUF file (`{gguf.name}`, {gguf.quantize}) for llama.cpp, Ollama and transformers"
    if cfg.lora.enabled:
        lora = cfg.lora
        method = (
            f"LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, target modules "
            f"{', '.join(lora.target_modules)}"
            + (", rsLoRA" if lora.use_rslora else "")
            + (", DoRA" if lora.use_dora else "")
        )
    else:
        method = "full fine-tuning (every weight)"
    train = metrics.get("train") if isinstance(metrics.get("train"), dict) else {}
    sample = metrics.get("sample") if isinstance(metrics.get("sample"), dict) else None
    evaluated = (
        f"a fixed stratified sample of {sample.get('questions')} of the {sample.get('of')} questions of "
        f"`{cfg.data.eval_split}`"
        if sample
        else f"the questions of the `{cfg.data.eval_split}` split"
        + (f" (the first {cfg.data.eval_limit})" if cfg.data.eval_limit else "")
    )
    if kind == "adapter":
        load = (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
            'model = PeftModel.from_pretrained(base, "THIS_DIRECTORY").merge_and_unload()\n'
            'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")'
        )
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'model = AutoModelForCausalLM.from_pretrained("THIS_DIRECTORY")\n'
            'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")'
        )
    base_line = f"- name: `{cfg.model.name}`" + (f" (loaded from `{base}`)" if base and base != cfg.model.name else "")
    parts = [
        "---\n" + yaml.safe_dump(meta, allow_unicode=True, sort_keys=False) + "---",
        f"# {cfg.name}: `{cfg.model.name}` tuned for JSQuAD extractive QA",
        f"Exported by `jsquad-lora export` on {date.today().isoformat()} from the run directory "
        f"`{run_dir.resolve().name}`, as {what}. {'GGUF' if gguf else 'Safetensors'} weights; the run's config "
        f"is in `{CONFIG_NAME}`.",
        "## Base model\n\n"
        + "\n".join(
            [
                base_line,
                f"- source: {card.get('source', '?')}",
                f"- architecture: {card.get('architecture', '?')}, {_number((card.get('parameters') or 0) / 1e6)}M "
                "parameters",
                f"- license: {license_text}. These weights derive from the base model: its license applies to them.",
            ]
            + (
                [
                    f"- the adapter's base is the local directory `{base}`: elsewhere, put the same base model "
                    "there or change `base_model_name_or_path` in adapter_config.json (for a built-in source, "
                    "jsquad-lora builds it on first use of `model.name`), or export with `--merge` for a whole model"
                ]
                if kind == "adapter" and base and Path(base).is_absolute()
                else []
            )
        ),
        "## Recipe\n\n"
        + "\n".join(
            [
                f"- {method}; {cfg.train.epochs} epoch(s), learning rate {cfg.train.learning_rate}, "
                f"batch size {cfg.train.batch_size}, seed {cfg.train.seed}",
                f"- training data: JSQuAD `{cfg.data.train_split}` split"
                + (f" ({train.get('examples')} examples, {_number(train.get('seconds'))} s)" if train else ""),
                f"- prompt template `{cfg.prompt.template}`, {cfg.prompt.fewshot} few-shot examples; "
                f"evaluation decoding `{cfg.eval.decoding}`, at most {cfg.eval.max_new_tokens} new tokens",
            ]
        ),
        f"## Scores (JSQuAD dev, percent; {evaluated})\n\n" + _scores_table(metrics),
        "## Use\n\n"
        + (_gguf_use(gguf, cfg) if gguf else "```python\n" + load + "\n```")
        + "\n\nPrompt it as the run did (the prompt of a sample question below"
        + (", as llama.cpp is given it: it adds the BOS token itself" if gguf and gguf.add_bos else "")
        + ") and generate greedily; the answer is "
        "the generated text up to the first newline, `<NL>` or end-of-sequence token, stripped. "
        + (
            "The scores above used `extractive` decoding: greedy over spans of the passage only (jsquad-lora's "
            "decoder, `generation.generate_answers`); plain `generate` is unconstrained greedy decoding."
            if cfg.eval.decoding == "extractive"
            else f"The scores above used `{cfg.eval.decoding}` decoding."
        )
        + "\n\n```text\n"
        + example_prompt
        + "\n```",
    ]
    return "\n\n".join(parts) + "\n"


def _gguf_use(gguf: _GgufExport, cfg: RunConfig) -> str:
    """How to run a GGUF export: llama.cpp, llama-cpp-python, Ollama (its Modelfile) and transformers."""
    n = cfg.eval.max_new_tokens
    shell_prompt = gguf.example.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("$", "\\$")
    message = gguf.turn.message(EXAMPLE.context, EXAMPLE.question)
    request = {"model": "jsquad", "prompt": message, "stream": False}
    transformers = (
        "transformers (which reads GGUF through the `gguf` package, dequantising to float32):\n\n```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("THIS_DIRECTORY", gguf_file="{gguf.name}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY", gguf_file="{gguf.name}")\n```'
        if gguf.model.config.model_type in GGUF_IN_TRANSFORMERS
        else f"transformers does not read {gguf.model.config.model_type} GGUF files: load the `--merge` export instead."
    )
    return (
        f"`{gguf.name}` holds the weights ({gguf.quantize}), the tokenizer and the chat template. llama.cpp "
        "(`llama-completion` takes the prompt as it is, with escapes such as `\\n`; `llama-cli` is its chat "
        "client, which applies the file's chat template to a message):\n\n"
        f"```sh\nllama-completion -m {gguf.name} -no-cnv --temp 0 --repeat-penalty 1 -n {n} -c {cfg.model.max_length} "
        f'-p "{shell_prompt}"\n```\n\n'
        "llama-cpp-python:\n\n```python\nfrom llama_cpp import Llama\n\n"
        f'llm = Llama(model_path="{gguf.name}", n_ctx={cfg.model.max_length})\n'
        f"out = llm(PROMPT, max_tokens={n}, temperature=0, repeat_penalty=1.0, stop={gguf.stops!r})\n"
        'answer = out["choices"][0]["text"].strip()\n```\n\n'
        "Ollama, with the `Modelfile` beside the file (its TEMPLATE writes the run's prompt around a message "
        "holding the passage and the question; Ollama was not run here, so this is untested):\n\n"
        "```sh\nollama create jsquad -f Modelfile\n"
        f"curl http://localhost:11434/api/generate -d '{json.dumps(request, ensure_ascii=False)}'\n```\n\n"
        + transformers
    )
