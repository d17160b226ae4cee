"""Where a run's base model comes from: the `ModelSource` interface and the lookups every stage uses.

A source (registered in `registry.MODEL_SOURCES`, one module each in `model/sources/`) claims a `model:`
config, resolves it to what transformers loads (a model directory or a hub id; a GGUF source converts
once into the cache), and describes the model (where it comes from, its license) for metrics.json, the
report and an export's model card. Sources are tried by `precedence`, then in registration order.
Adding one is a module in `model/sources/` and one import line in its `__init__.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from jsquad_lora.config.schema import ModelConfig, RunConfig
from jsquad_lora.model.load import load_base_model, load_tokenizer
from jsquad_lora.registry import MODEL_SOURCES
from jsquad_lora.util import distributed


@dataclass(frozen=True)
class ModelSource:
    name: str
    help: str
    #: claims(model config): this source provides the model
    claims: Callable[[ModelConfig], bool]
    #: resolve(model config) -> the model directory or hub id transformers loads
    resolve: Callable[[ModelConfig], str]
    #: describe(model config) -> (where the model comes from, its license), as metrics.json's base_model says
    describe: Callable[[ModelConfig], tuple[str, str]]
    #: the license tag of an export's model-card metadata (a Hugging Face license identifier)
    hf_license: str = "other"
    #: sources are tried from the lowest: an explicit GGUF file (10) before names (50) before the hub (90)
    precedence: int = 50
    #: prepare(run config, run_dir, training questions) -> (model, tokenizer) for a model made per run;
    #: None: `resolve` then load that directory (or hub id)
    prepare: Callable[[RunConfig, Path, Any], tuple[Any, Any]] | None = None
    #: run_base(model config, run_dir) -> where a run's base model is, for a model made per run; None: `resolve`
    run_base: Callable[[ModelConfig, Path], str] | None = None
    #: check_run(run_dir): an InputError naming what a finished run of this source lacks (`ask`, `serve`, `export`)
    check_run: Callable[[Path], None] | None = None
    #: model_name(model config) -> the model's own name for metrics.json's base_model (a GGUF file: its
    #: metadata's); None: `model.name`
    model_name: Callable[[ModelConfig], str] | None = None
    #: run_name(model config) -> a run directory's default name for this model, cheap (no file read), or None to
    #: keep the config's name (the model is the preset's)
    run_name: Callable[[ModelConfig], str | None] | None = None


def register_source(source: ModelSource) -> ModelSource:
    return MODEL_SOURCES.register(source.name, source)


def model_source(cfg: ModelConfig) -> ModelSource:
    """The source that claims `cfg`: the first by precedence, then registration order."""
    return next(source for source in sorted(MODEL_SOURCES.values(), key=lambda s: s.precedence) if source.claims(cfg))


def resolve_model_source(cfg: ModelConfig) -> str:
    """The model directory (or hub id) every later stage loads: `model.name` as given, or, for a
    built-in source or a `model.gguf_file`, a safetensors directory converted once into the cache
    (written atomically, reused by later runs; its path is logged)."""
    return model_source(cfg).resolve(cfg)


def run_base_source(cfg: ModelConfig, run_dir: Path) -> str:
    """A run's base model: the tiny model's run_dir/base, else `cfg.name` resolved (a built-in or GGUF
    source becomes its cached model directory; a hub id stays an id)."""
    source = model_source(cfg)
    return source.run_base(cfg, run_dir) if source.run_base else source.resolve(cfg)


def base_model_and_tokenizer(cfg: RunConfig, run_dir: Path, train_questions):
    """The run's base model and tokenizer, as its source provides them."""
    source = model_source(cfg.model)
    if source.prepare is not None:
        return source.prepare(cfg, run_dir, train_questions)
    with distributed.main_first():  # the main process converts a built-in or GGUF source (cached) first
        location = source.resolve(cfg.model)
    model_cfg = dataclasses.replace(cfg.model, name=location, gguf_file=None)
    return load_base_model(model_cfg), load_tokenizer(location, cfg.model.trust_remote_code)


def base_model_card(cfg: ModelConfig, model) -> dict:
    """What the report says about the base model: name, where it came from, size, license. The name and the
    license are the model's own (a GGUF file's from its metadata), never those of `model.name`'s default."""
    source = model_source(cfg)
    origin, license_text = source.describe(cfg)
    return {
        "name": source.model_name(cfg) if source.model_name else cfg.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": type(model).__name__,
        "source": origin,
        "license": license_text,
    }


def run_name_for(cfg: RunConfig) -> str:
    """A run directory's default name (runs/<this>): the model's, where `model.gguf_file` names a file that is
    not the preset's model (the file name without .gguf, lowercased: qwen2.5-coder-0.5b-instruct-q4_k_m), else
    the config's name. Cheap: no file is read."""
    source = model_source(cfg.model)
    return (source.run_name(cfg.model) if source.run_name else None) or cfg.name
