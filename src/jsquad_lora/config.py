"""Run configuration: typed dataclasses loaded from YAML, with `key=value` overrides.

A wrong key or type fails at start with the file, the key and the allowed values, not an hour
into training. The resolved config is written into every run directory (`config.yaml`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .decoding import DECODING_MODES
from .errors import InputError
from .jsonio import lone_surrogate, shown
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
    #: JSON file, JGLUE-style directory, or "jglue:v1.3" / "jglue:v1.1"; None → $JSQUAD_DIR
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
    #: also send the training metrics here, besides loss.jsonl: [] or [tensorboard] (RUN/tensorboard/)
    report_to: list[str] = field(default_factory=list)
    #: FSDP (weights, gradients and optimizer state sharded over the processes) for a model that does not
    #: fit one GPU; launch with torchrun / accelerate launch; CUDA GPUs only (README "Several processes")
    fsdp: bool = False
    #: transformers' `fsdp_config`, e.g. {fsdp_version: 2, transformer_layer_cls_to_wrap: [Qwen2DecoderLayer]}
    fsdp_config: dict = field(default_factory=dict)


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
        try:
            value = float(value)
        except OverflowError:
            _fail(source, key, f"{str(value)[:20]}... is too large for a number", "give a finite number")
    if hint is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 3e-3 as a string; accept any text that is a number
        try:
            value = float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        _fail(
            source,
            key,
            f"expected {hint.__name__}, got {type(value).__name__} {value!r}",
            f"give a {hint.__name__} value",
        )
    import math

    if hint is float and not math.isfinite(value):
        _fail(
            source,
            key,
            f"must be a finite number, got {value!r}",
            "give a finite number: NaN and infinity are not allowed (and a value such as 1e400 overflows to infinity)",
        )
    if hint is str and (found := lone_surrogate(value)):
        _fail(
            source,
            key,
            f"not valid text: it holds {found} (a byte that is not UTF-8, or a lone \\ud800-style escape)",
            "give the value as UTF-8 text",
        )
    return value


def _source_of(path: str, source: str, overrides: dict[str, str] | None) -> str:
    """Who set the key at `path`: the last `key=value` override that set it, a section above it or a key
    below it ("override train.epochs=x"), else the config file."""
    for key, text in reversed(list((overrides or {}).items())):
        if key == path or path.startswith(key + ".") or key.startswith(path + "."):
            return _override_source(text)
    return source


def _build(cls: type, data: Any, source: str, prefix: str = "", overrides: dict[str, str] | None = None) -> Any:
    """`cls` from a mapping. `overrides`: dotted key → the `key=value` text that set it, so that an error
    about such a key names the override, not the file."""
    if not isinstance(data, dict):
        _fail(
            _source_of(prefix.rstrip("."), source, overrides) if prefix else source,
            prefix.rstrip(".") or "top level",
            f"expected a mapping, got {type(data).__name__}",
            "write `key: value` lines",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        key_source = _source_of(path, source, overrides)
        if key not in names:
            _fail(key_source, path, "unknown key", f"known keys here: {', '.join(sorted(names))}")
        hint = hints[key]
        kwargs[key] = (
            _build(hint, value, source, path + ".", overrides)
            if dataclasses.is_dataclass(hint)
            else _coerce(value, hint, key_source, path)
        )
        choices = fields[key].metadata.get("choices")  # a registry: its names, read now
        if choices is not None and kwargs[key] not in choices:
            _fail(key_source, path, f"{kwargs[key]!r} is not allowed", f"use one of: {', '.join(choices)}")
    return cls(**kwargs)


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SEED_LIMIT = 2**32  # numpy's and the Trainer's seed range


def _optimizer_names() -> set[str]:
    from transformers.training_args import OptimizerNames

    return {o.value for o in OptimizerNames}


def _validate(cfg: RunConfig) -> None:
    """Ranges and cross-field rules, checked when the config loads: before any model work."""
    positive_or_all = "must be positive (or null: all questions)"
    m, t, d, e = cfg.model, cfg.train, cfg.data, cfg.eval
    checks = [
        ("name", RUN_NAME.fullmatch(cfg.name) is not None, "must be a plain name: letters, digits, . _ - (no /)"),
        ("lora.r", 0 < cfg.lora.r <= 4096, "must be in [1, 4096]"),
        ("lora.alpha", cfg.lora.alpha > 0, "must be positive"),
        ("lora.dropout", 0 <= cfg.lora.dropout < 1, "must be in [0, 1)"),
        ("lora.target_modules", bool(cfg.lora.target_modules), "must name at least one module (or all-linear)"),
        ("train.epochs", 0 < t.epochs <= 1000, "must be in (0, 1000]"),
        ("train.learning_rate", 0 < t.learning_rate < 1, "must be in (0, 1)"),
        ("train.batch_size", t.batch_size > 0, "must be positive"),
        ("train.grad_accum", t.grad_accum > 0, "must be positive"),
        ("train.warmup_ratio", 0 <= t.warmup_ratio < 1, "must be in [0, 1)"),
        ("train.weight_decay", 0 <= t.weight_decay < 1, "must be in [0, 1)"),
        ("train.max_grad_norm", t.max_grad_norm > 0, "must be positive"),
        ("train.seed", 0 <= t.seed < SEED_LIMIT, f"must be in [0, {SEED_LIMIT})"),
        ("train.prompt_loss_weight", 0 <= t.prompt_loss_weight <= 1, "must be in [0, 1]"),
        ("train.logging_steps", t.logging_steps > 0, "must be positive"),
        ("train.save_steps", t.save_steps > 0, "must be positive"),
        ("train.synthetic_per_passage", t.synthetic_per_passage >= 0, "must be >= 0"),
        ("train.report_to", set(t.report_to) <= {"tensorboard"}, "may hold only tensorboard"),
        ("train.fsdp_config", isinstance(t.fsdp_config, dict), "must be a mapping"),
        ("train.fsdp", not t.fsdp or m.load_in_8bit + m.load_in_4bit == 0, "does not combine with 8-/4-bit loading"),
        ("eval.batch_size", e.batch_size > 0, "must be positive"),
        ("eval.max_new_tokens", e.max_new_tokens > 0, "must be positive"),
        ("data.eval_sample", d.eval_sample is None or d.eval_sample > 0, positive_or_all),
        ("data.train_sample", d.train_sample is None or d.train_sample > 0, positive_or_all),
        (
            "data.train_sample_cpu_float32",
            d.train_sample_cpu_float32 is None or d.train_sample_cpu_float32 > 0,
            "must be positive (or null: use data.train_sample)",
        ),
        ("data.train_limit", d.train_limit is None or d.train_limit > 0, positive_or_all),
        ("data.eval_limit", d.eval_limit is None or d.eval_limit > 0, positive_or_all),
        ("data.sample_seed", 0 <= d.sample_seed < SEED_LIMIT, f"must be in [0, {SEED_LIMIT})"),
        ("model.max_length", 64 <= m.max_length <= 1_048_576, "must be in [64, 1048576]"),
        ("prompt.fewshot", 0 <= cfg.prompt.fewshot <= 64, "must be in [0, 64]"),
        ("prompt.seed", 0 <= cfg.prompt.seed < SEED_LIMIT, f"must be in [0, {SEED_LIMIT})"),
        ("model.load_in_8bit", not (m.load_in_8bit and m.load_in_4bit), "8-bit and 4-bit are exclusive"),
        (
            "eval.max_new_tokens",
            e.max_new_tokens <= m.max_length // 2,
            f"must leave the prompt at least half of model.max_length={m.max_length}",
        ),
    ]
    if m.name == "tiny":
        checks += [
            (f"model.tiny_{k}", getattr(m, f"tiny_{k}") > 0, "must be positive")
            for k in ("layers", "hidden", "heads", "intermediate")
        ]
        checks.append(
            ("model.tiny_hidden", m.tiny_heads > 0 and m.tiny_hidden % m.tiny_heads == 0,
             f"must be a multiple of model.tiny_heads={m.tiny_heads}")
        )  # fmt: skip
    for key, ok, problem in checks:
        if not ok:
            _fail(
                "config", key, f"{problem} (got {_get(cfg, key)!r})", "change the value in the config or with key=value"
            )
    if t.optim not in _optimizer_names():
        _fail(
            "config",
            "train.optim",
            f"unknown optimizer {t.optim!r}",
            f"use one of transformers' optimizers, e.g. adamw_torch, adamw_torch_fused, adafactor, sgd "
            f"({len(_optimizer_names())} in all: transformers.training_args.OptimizerNames)",
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


def _override_source(text: str) -> str:
    """An override as an error's source: "override train.epochs=x", printable and of sensible length."""
    return "override " + shown(text if len(text) <= 100 else text[:100] + "…")


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden by later keys
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error follows
                if first is not key_node.start_mark:
                    raise _DuplicateKeyError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first on line {first.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise InputError(
            _override_source(text),
            "an override must look like key=value",
            fix="e.g. train.epochs=3 or lora.target_modules=[all-linear]",
        )
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw) if raw != "" else ""
    except _DuplicateKeyError as err:
        raise InputError(_override_source(text), str(err.problem), fix="give each key once") from None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise InputError(
            _override_source(text), "the value is nested too deeply", fix="give a plain value such as 3 or [a, b]"
        ) from None
    return key.strip().split("."), value


def load_config(path: Path | str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (default: the offline preset) and apply `key=value` overrides."""
    source = find_config(str(path) if path else None)
    try:
        data = _load_yaml(source.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        fix = (
            "keep one entry per key in each mapping (YAML keeps only the last, silently)"
            if isinstance(err, _DuplicateKeyError)
            else "repair the YAML syntax"
        )
        raise InputError(source, f"invalid YAML: {getattr(err, 'problem', err)}", where=where, fix=fix) from None
    except UnicodeDecodeError:
        raise InputError(source, "not UTF-8 text", fix="re-save the config as UTF-8") from None
    except RecursionError:
        raise InputError(
            source,
            "nested too deeply: its mappings/lists nest beyond what the YAML reader can follow",
            fix="a config is two levels deep (`section:` blocks of `key: value`); check the file is the one you meant",
        ) from None
    except OSError as err:
        raise InputError(
            source, f"cannot read the config ({err.strerror or err})", fix="pass a readable YAML file"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            source,
            f"a config must be a mapping, got {type(data).__name__}",
            fix="write `section:` blocks of `key: value`",
        )
    sources: dict[str, str] = {}  # dotted key → the override that set it, for errors about it
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise InputError(
                    _override_source(text),
                    f"{key} is not a section",
                    where=".".join(keys[: depth + 1]),
                    fix="override a leaf key such as train.epochs",
                )
        node[keys[-1]] = value
        sources[".".join(keys)] = text
    try:
        return _build(RunConfig, data, str(source), overrides=sources)
    except InputError as err:  # a range or cross-field rule (_validate): name who set the value
        if err.source != "config":
            raise
        who = _source_of(err.where or "", str(source), sources)
        raise InputError(who, err.problem, where=err.where, fix=err.fix) from None


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), allow_unicode=True, sort_keys=False)
