"""Run configuration: typed dataclasses loaded from YAML, with `key=value` overrides.

A wrong key or type fails at start with the file, the key and the allowed values, not an hour
into training. The resolved config is written into every run directory (`config.yaml`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .decoding import DECODING_MODES
from .errors import InputError
from .prompts import TEMPLATES

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = "gemma-3-270m.yaml"


@dataclass
class ModelConfig:
    #: hub id, local path, "gemma-3-270m" (built in: Gemma 3 270M from its PyPI GGUF packages,
    #: converted once into a cached model directory), or "tiny": a small GPT-NeoX built offline
    name: str = "tiny"
    #: a GGUF file to convert (once, cached) into a model directory; relative to `name` when that is a directory
    gguf_file: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    #: load pickle (.bin) checkpoints; off: only safetensors, since unpickling can run code
    allow_pickle: bool = False
    #: None lets transformers pick (sdpa where available); "flash_attention_2" needs the package
    attn_implementation: str | None = None
    #: longest training/eval sequence in tokens; longer prompts lose passage text, never the answer
    max_length: int = 1024
    gradient_checkpointing: bool = False
    # shape of the offline "tiny" model
    tiny_layers: int = 4
    tiny_hidden: int = 256
    tiny_heads: int = 8
    tiny_intermediate: int = 1024


@dataclass
class LoraSettings:
    #: False → full fine-tuning of every weight
    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    #: module names, or ["all-linear"]
    target_modules: list[str] = field(default_factory=lambda: ["query_key_value"])
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False
    use_rslora: bool = False


@dataclass
class DataConfig:
    #: JSON file, JGLUE-style directory, or "jglue:v1.3"; None → $JSQUAD_DIR
    dir: str | None = None
    #: split names ("train", "valid", "test") or file names inside `dir`
    train_split: str = "train"
    eval_split: str = "valid"
    #: use only the first N questions (None: all); for smoke tests
    train_limit: int | None = None
    eval_limit: int | None = None
    #: evaluate a fixed random sample of this many questions (None: all), stratified by article,
    #: the same ids before and after (written to eval_ids.json); its standard error is reported
    eval_sample: int | None = None
    #: train on a fixed random sample of this many questions (None: all), stratified by article
    train_sample: int | None = None
    #: the sample size instead, when training runs in float32 on a CPU (no AVX512-BF16/AMX, or
    #: train.mixed_precision=float32): the same time budget at float32 speed (None: train_sample)
    train_sample_cpu_float32: int | None = None
    #: seed of both samples
    sample_seed: int = 20231


@dataclass
class PromptConfig:
    #: a name registered in prompts.TEMPLATES (seed, newline, harness, fintan, chat)
    template: str = field(default="seed", metadata={"choices": TEMPLATES})
    fewshot: int = 0
    seed: int = 1234


@dataclass
class TrainConfig:
    epochs: float = 2.0
    learning_rate: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    #: length_grouped: batches of similar length; padding_free: one flattened row per batch;
    #: shared_prefix: the questions of one passage in one row, the prompt up to the question
    #: computed once (a 4-D mask keeps them apart; sdpa only; batch_size then counts passages);
    #: random: naive pad-to-longest in random order
    batching: Literal["length_grouped", "padding_free", "shared_prefix", "random"] = "length_grouped"
    #: cloze questions made from each training passage (augment.py); for from-scratch models
    synthetic_per_passage: int = 0
    #: loss weight of prompt tokens relative to answer + EOS tokens. 0 = answer-only loss (every
    #: pretrained recipe). A from-scratch model needs the prompt's signal to learn the language
    #: and to copy: a question mostly repeats passage words, so predicting it trains the same
    #: look-up-and-copy attention that extracting an answer needs.
    prompt_loss_weight: float = 0.0
    #: apply the output layer only where a token is labelled (the answer + EOS), not at every
    #: position as `model(labels=...)` does: the same loss, much faster with a large vocabulary (BENCHMARKS.md §0)
    head_at_labels_only: bool = True
    #: bfloat16 autocast in training: "auto" = on a CUDA GPU with bf16, or a CPU with AMX-BF16
    #: (measured faster there; BENCHMARKS.md); float32 master weights and optimizer either way
    mixed_precision: Literal["auto", "bf16", "float32"] = "auto"
    logging_steps: int = 10
    save_steps: int = 200
    optim: str = "adamw_torch"


@dataclass
class EvalConfig:
    #: a name registered in decoding.DECODING_MODES (greedy, extractive)
    decoding: str = field(default="greedy", metadata={"choices": DECODING_MODES})
    batch_size: int = 32
    max_new_tokens: int = 48
    before: bool = True
    after: bool = True
    side_check: bool = True
    backend: Literal["hf", "vllm"] = "hf"
    #: weights for generation: "auto" = bfloat16 on a GPU with bf16 or a CPU with bf16 instructions
    #: (AVX512-BF16/AMX), else the model's dtype. Answers checked against float32 in BENCHMARKS.md
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    share_prefix: bool = True  # HF backend: run a passage's shared prompt prefix once for its questions (same answers)


@dataclass
class RunConfig:
    name: str = "tiny-cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _validate(self)


def _fail(source: str, key: str, problem: str, fix: str) -> typing.NoReturn:
    raise InputError(source, problem, where=key, fix=fix)


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Check `value` against a type hint, converting only what YAML cannot express (int → float)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], source, key)
    if origin is Literal:
        if value not in args:
            _fail(source, key, f"{value!r} is not allowed", f"use one of: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            _fail(
                source,
                key,
                f"expected a list, got {type(value).__name__} {value!r}",
                "write a YAML list, e.g. [query_key_value]",
            )
        return [_coerce(v, args[0], source, key) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 3e-3 as a string; accept any text that is a number
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        _fail(
            source,
            key,
            f"expected {hint.__name__}, got {type(value).__name__} {value!r}",
            f"give a {hint.__name__} value",
        )
    return value


def _build(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        _fail(
            source, prefix or "top level", f"expected a mapping, got {type(data).__name__}", "write `key: value` lines"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            _fail(source, path, "unknown key", f"known keys here: {', '.join(sorted(names))}")
        hint = hints[key]
        kwargs[key] = (
            _build(hint, value, source, path + ".")
            if dataclasses.is_dataclass(hint)
            else _coerce(value, hint, source, path)
        )
        choices = fields[key].metadata.get("choices")  # a registry: its names, read now
        if choices is not None and kwargs[key] not in choices:
            _fail(source, path, f"{kwargs[key]!r} is not allowed", f"use one of: {', '.join(choices)}")
    return cls(**kwargs)


def _validate(cfg: RunConfig) -> None:
    checks = [
        ("lora.r", cfg.lora.r > 0, "must be positive"),
        ("lora.alpha", cfg.lora.alpha > 0, "must be positive"),
        ("lora.dropout", 0 <= cfg.lora.dropout < 1, "must be in [0, 1)"),
        ("train.epochs", cfg.train.epochs > 0, "must be positive"),
        ("train.learning_rate", cfg.train.learning_rate > 0, "must be positive"),
        ("train.batch_size", cfg.train.batch_size > 0, "must be positive"),
        ("train.grad_accum", cfg.train.grad_accum > 0, "must be positive"),
        ("train.prompt_loss_weight", 0 <= cfg.train.prompt_loss_weight <= 1, "must be in [0, 1]"),
        ("eval.batch_size", cfg.eval.batch_size > 0, "must be positive"),
        (
            "data.eval_sample",
            cfg.data.eval_sample is None or cfg.data.eval_sample > 0,
            "must be positive (or null: all questions)",
        ),
        (
            "data.train_sample",
            cfg.data.train_sample is None or cfg.data.train_sample > 0,
            "must be positive (or null: all questions)",
        ),
        (
            "data.train_sample_cpu_float32",
            cfg.data.train_sample_cpu_float32 is None or cfg.data.train_sample_cpu_float32 > 0,
            "must be positive (or null: use data.train_sample)",
        ),
        (
            "data.train_limit",
            cfg.data.train_limit is None or cfg.data.train_limit > 0,
            "must be positive (or null: all questions)",
        ),
        (
            "data.eval_limit",
            cfg.data.eval_limit is None or cfg.data.eval_limit > 0,
            "must be positive (or null: all questions)",
        ),
        ("eval.max_new_tokens", cfg.eval.max_new_tokens > 0, "must be positive"),
        ("model.max_length", cfg.model.max_length >= 64, "must be at least 64"),
        ("prompt.fewshot", cfg.prompt.fewshot >= 0, "must be >= 0"),
        (
            "model.load_in_8bit",
            not (cfg.model.load_in_8bit and cfg.model.load_in_4bit),
            "8-bit and 4-bit are exclusive",
        ),
    ]
    for key, ok, problem in checks:
        if not ok:
            _fail(
                "config", key, f"{problem} (got {_get(cfg, key)!r})", "change the value in the config or with key=value"
            )


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def find_config(name: str | None) -> Path:
    """A config path as given, or a preset name from configs/ (with or without .yaml)."""
    if not name:
        return CONFIG_DIR / DEFAULT_CONFIG
    path = Path(name)
    if path.exists():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.exists():
            return candidate
    presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise InputError(name, "config file not found", fix=f"pass a YAML path or a preset: {presets}")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise InputError(
            text, "an override must look like key=value", fix="e.g. train.epochs=3 or lora.target_modules=[all-linear]"
        )
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: Path | str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (default: the offline preset) and apply `key=value` overrides."""
    source = find_config(str(path) if path else None)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        raise InputError(
            source, f"invalid YAML: {getattr(err, 'problem', err)}", where=where, fix="repair the YAML syntax"
        ) from None
    except UnicodeDecodeError:
        raise InputError(source, "not UTF-8 text", fix="re-save the config as UTF-8") from None
    if not isinstance(data, dict):
        raise InputError(
            source,
            f"a config must be a mapping, got {type(data).__name__}",
            fix="write `section:` blocks of `key: value`",
        )
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise InputError(text, f"{key} is not a section", fix="override a leaf key such as train.epochs")
        node[keys[-1]] = value
    return _build(RunConfig, data, str(source))


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), allow_unicode=True, sort_keys=False)
