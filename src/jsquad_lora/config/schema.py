"""The run configuration's schema: typed dataclasses, their defaults and help, and the range checks.

The defaults ARE the default recipe (`jsquad-lora run` with no arguments, the preset gemma-3-270m): LoRA
on Google's Gemma 3 270M on 2 CPU cores within 20 minutes, offline (the test split trains, dev evaluates:
JSQuAD's train split cannot be fetched here). The other presets (config/presets/) say how they differ.
Measured numbers behind the choices are in docs/results.md and BENCHMARKS.md, not here.

`config.load` reads them from YAML with `key=value` overrides. A field whose values are a registry's names
says so in its metadata (`{"choices": TEMPLATES}`): the loader checks the value against the registry as it
is then, so a newly registered template or decoding mode is a valid value with no edit here.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from jsquad_lora.errors import InputError, brief
from jsquad_lora.registry import DECODING_MODES, EVAL_BACKENDS, TEMPLATES


@dataclass
class ModelConfig:
    #: hub id, local path, "gemma-3-270m" (built in: Gemma 3 270M from its PyPI GGUF packages,
    #: converted once into a cached model directory), or "tiny": a small GPT-NeoX built offline
    #: (registry.MODEL_SOURCES says who provides each)
    name: str = "gemma-3-270m"
    #: a GGUF file to convert (once, cached) into a model directory; relative to `name` when that is a directory
    gguf_file: str | None = None
    #: master weights; training autocasts to bfloat16 and generation runs in bfloat16 where the CPU has bf16
    #: instructions (train.mixed_precision, eval.dtype)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    #: load pickle (.bin) checkpoints; off: only safetensors, since unpickling can run code
    allow_pickle: bool = False
    #: None lets transformers pick (sdpa where available); "flash_attention_2" needs the package
    attn_implementation: str | None = None
    #: longest training/eval sequence in tokens; a longer passage is read in overlapping windows
    #: (dev passages reach 501 Gemma tokens: every JSQuAD prompt is one window)
    max_length: int = 640
    #: tokens shared by consecutive windows of a passage too long for one prompt (SQuAD's doc_stride):
    #: an answer shorter than this lies wholly inside some window. None: derived from the room the run's prompts
    #: leave for a passage (half of it, at most 128), written to the run's config.yaml
    window_overlap: int | None = None
    #: at most this many passage tokens a window (None: as many as the prompt has room for). Smaller windows
    #: hold fewer passages that do not answer: for a model that abstains where a window holds no answer
    window_tokens: int | None = None
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
    #: the default's r=16 / alpha 32 / dropout 0 with learning rate 1e-3 beat the write-up's r=8 / alpha 16 /
    #: dropout 0.05 at 5e-4 by +5.1 EM on the same 1,000 training questions; dropout 0 alone: the same answers
    #: within a point, ~10 % faster steps (BENCHMARKS.md, Ablations)
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    #: module names, or ["all-linear"]
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    bias: Literal["none", "all", "lora_only"] = "none"
    #: LoRA in the last N decoder layers only (None: every layer). The layers below stay frozen with no LoRA,
    #: so backpropagation stops at the lowest adapted layer: each step skips their backward pass
    top_layers: int | None = None
    use_dora: bool = False
    use_rslora: bool = False


@dataclass
class DataConfig:
    #: JSON file, JGLUE-style directory, or "jglue:v1.3" / "jglue:v1.1"; None → $JSQUAD_DIR
    dir: str | None = None
    #: the training / evaluation data as a source of its own, instead of `dir` + `train_split` / `eval_split`:
    #: a file (.json, .jsonl, .csv, .tsv, .parquet, .arrow), a directory (JGLUE names or save_to_disk),
    #: hf:ID[:CONFIG][@REVISION], jglue:v1.3; a split inside it as SRC:SPLIT (data/formats.py). `train` may be a
    #: list of sources trained on together, each a source or {source: SRC, limit: N, weight: W}: limit keeps at
    #: most N of its questions (whole passages, drawn with sample_seed), weight counts them W times (the integer
    #: part repeats them, the fraction is a seeded sample); train_sample and train_limit then cut the mix
    train: str | list[Any] | None = None
    eval: str | None = None
    #: a table's column names for context, question, answer (answers), id, document: {context: 本文, ...}
    columns: dict[str, str] | None = None
    #: the text encoding of CSV/TSV files (None: UTF-8, with or without a BOM); cp932 for Shift_JIS
    encoding: str | None = None
    #: split names ("train", "valid", "test") or file names inside `dir`; the test split trains by default
    #: because JSQuAD's train split cannot be fetched offline (no article is shared with dev)
    train_split: str = "test"
    eval_split: str = "valid"
    #: use only the first N questions (None: all); for smoke tests
    train_limit: int | None = None
    eval_limit: int | None = None
    #: evaluate a fixed random sample of this many questions (None: all), stratified by article,
    #: the same ids before and after (written to eval_ids.json); its standard error is reported
    eval_sample: int | None = 1000
    #: evaluate only these questions: a JSON list of ids (another run's eval_ids.json: the same questions, paired),
    #: read before data.eval_sample; an id the `eval` data lacks is an error
    eval_ids: str | None = None
    #: train on a fixed random sample of this many questions (None: all), stratified by article, whole
    #: passages: what fits the 20-minute budget on 2 cores with bfloat16 (AVX512-BF16/AMX)
    train_sample: int | None = 2000
    #: the sample size instead, when training runs in float32 on a CPU (no AVX512-BF16/AMX, or
    #: train.mixed_precision=float32): the same time budget at float32 speed (None: train_sample)
    train_sample_cpu_float32: int | None = 700
    #: seed of both samples
    sample_seed: int = 20231


@dataclass
class PromptConfig:
    #: a name registered in registry.TEMPLATES (seed, newline, harness, fintan, chat); chat (the seed
    #: instruction in the tokenizer's chat template) scored highest on Gemma (docs/results.md)
    template: str = field(default="chat", metadata={"choices": TEMPLATES})
    fewshot: int = 0
    seed: int = 1234


@dataclass
class TrainConfig:
    epochs: float = 1.0
    #: 1e-3 beat 5e-4 (+2.1 EM) and 2e-3 (+0.9) at 1,000 training questions (BENCHMARKS.md, Ablations)
    learning_rate: float = 1e-3
    #: rows per step and process (shared_prefix: passages; about 4 passages are ~15 questions)
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    #: length_grouped: batches of similar length; padding_free: one flattened row per batch;
    #: shared_prefix: the questions of one passage in one row, the prompt up to the question
    #: computed once (a 4-D mask keeps them apart; sdpa only; batch_size then counts passages);
    #: random: naive pad-to-longest in random order
    batching: Literal["length_grouped", "padding_free", "shared_prefix", "random"] = "shared_prefix"
    #: cloze questions made from each training passage (augment.py); for from-scratch models
    synthetic_per_passage: int = 0
    #: also train on the windows of a long passage that hold no gold answer, as "no answer" examples (EOS at
    #: once): the model learns to abstain where a window does not answer (use with eval.abstain=true)
    negative_windows: bool = False
    #: share of the training questions (whole articles) held out to tune eval.abstain_threshold after training
    #: (the threshold with the best EM on them; metrics.json's "abstention"); 0: keep eval.abstain_threshold
    abstain_holdout: float = 0.0
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
    save_steps: int = 50
    optim: str = "adamw_torch"
    #: also send the training metrics here, besides loss.jsonl: [] or [tensorboard] (RUN/tensorboard/)
    report_to: list[str] = field(default_factory=list)
    #: FSDP (weights, gradients and optimizer state sharded over the processes) for a model that does not
    #: fit one GPU; launch with torchrun / accelerate launch; CUDA GPUs only (README "Several processes")
    fsdp: bool = False
    #: transformers' `fsdp_config`, e.g. {fsdp_version: 2, transformer_layer_cls_to_wrap: [Qwen2DecoderLayer]}
    fsdp_config: dict = field(default_factory=dict)


@dataclass
class EndpointConfig:
    """`eval.backend=openai`: an OpenAI-compatible chat endpoint answers the evaluation questions
    (evaluate/openai_chat.py; docs/chat-models.md)."""

    #: the API's base URL, ending in /v1: http://127.0.0.1:8080/v1 (llama.cpp's server, vLLM, Ollama, `jsquad-lora
    #: serve`) or https://api.openai.com/v1. A host other than loopback (127.0.0.0/8, ::1, localhost) needs
    #: allow_remote=true: the questions and their passages are sent there
    base_url: str | None = None
    #: the model name the endpoint serves (gpt-4o-mini; a `serve` run directory's name)
    model: str | None = None
    #: the environment variable holding the API key (never the key itself: config.yaml is written to the run)
    api_key_env: str = "OPENAI_API_KEY"
    #: requests in flight at once
    concurrency: int = 4
    #: seconds one request may take before it is retried
    timeout: float = 120.0
    #: retries of a request that fails (429, 5xx, a timeout, a dropped connection), with exponential backoff that
    #: honours the server's Retry-After (the `openai` client's); a question still unanswered then is recorded as
    #: failed, never as an empty answer, and the same command again asks it again
    max_retries: int = 5
    #: send the data to a host outside this machine (base_url's host is not loopback)
    allow_remote: bool = False
    #: the endpoint's prices per million prompt / completion tokens, in any currency: metrics.json then holds a
    #: "cost" line (the tool knows no prices)
    prompt_price_per_million: float | None = None
    completion_price_per_million: float | None = None


@dataclass
class EvalConfig:
    #: a name registered in registry.DECODING_MODES (greedy, extractive, span); extractive: answers are passage
    #: spans, and the LM head scores only the passage's tokens; span: extractive, then the spans around its
    #: answer ranked by log-probability (generate/span_scoring.py)
    decoding: str = field(default="extractive", metadata={"choices": DECODING_MODES})
    batch_size: int = 32
    #: the longest dev answer is 17 Gemma tokens
    max_new_tokens: int = 20
    before: bool = True
    after: bool = True
    side_check: bool = True
    #: a name registered in registry.EVAL_BACKENDS (hf, vllm, llama_cpp, openai: a chat endpoint, `openai` below)
    backend: str = field(default="hf", metadata={"choices": EVAL_BACKENDS})
    #: weights for generation: "auto" = bfloat16 on a GPU with bf16 or a CPU with bf16 instructions
    #: (AVX512-BF16/AMX), else the model's dtype. Answers checked against float32 in BENCHMARKS.md
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    share_prefix: bool = True  # HF backend: run a passage's shared prompt prefix once for its questions (same answers)
    #: the model may answer nothing (an end token first) where the passage holds no answer: for runs trained on
    #: questions without answers, or with train.negative_windows. ask/serve then return "answer": null
    abstain: bool = False
    #: with abstain: abstain only where the first token's end-token logit beats every other by more than this
    #: (0: greedy); tune it on held-out training questions, never on the evaluation set
    abstain_threshold: float = 0.0
    #: the chat endpoint of eval.backend=openai
    openai: EndpointConfig = field(default_factory=EndpointConfig)


@dataclass
class RunConfig:
    #: the run directory's name under runs/ (a plain name)
    name: str = "gemma-3-270m"
    #: answer: passage + question → answer (the QA task). question: passage + answer → question, trained on the
    #: same labelled questions the other way round and scored against the human question (chrF, char-F1): the
    #: generator of `jsquad-lora data generate --generator RUN_DIR`
    task: Literal["answer", "question"] = "answer"
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
        ("lora.top_layers", cfg.lora.top_layers is None or cfg.lora.top_layers > 0, "must be positive (or null: all)"),
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
        ("train.abstain_holdout", 0 <= t.abstain_holdout < 0.5, "must be in [0, 0.5)"),
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
        (
            "model.window_overlap",
            m.window_overlap is None or 0 <= m.window_overlap < m.max_length,
            "must be in [0, model.max_length) (or null: derived from the room a prompt leaves for its passage)",
        ),
        ("model.window_tokens", m.window_tokens is None or m.window_tokens > 0, "must be positive (or null)"),
        (
            "model.window_tokens",
            m.window_tokens is None or m.window_overlap is None or m.window_overlap < m.window_tokens,
            "must be more than model.window_overlap (or null)",
        ),
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
    if cfg.task == "question":
        checks += [
            ("eval.decoding", e.decoding not in ("extractive", "span"),
             "must generate freely for task=question (a question is not a span of the passage): use greedy"),
            ("eval.abstain", not e.abstain, "must be false for task=question (every answer has a question)"),
            ("train.synthetic_per_passage", t.synthetic_per_passage == 0, "must be 0 for task=question"),
            ("train.negative_windows", not t.negative_windows, "must be false for task=question"),
        ]  # fmt: skip
    if e.backend == "openai":
        checks += _endpoint_checks(e.openai)
    for key, ok, problem in checks:
        if not ok:
            _fail(
                "config",
                key,
                f"{problem} (got {brief(_get(cfg, key))})",
                "change the value in the config or with key=value",
            )
    if e.backend == "openai":
        _refuse_remote(e.openai)
    for key, problem in _train_source_problems(d.train):
        _fail("config", key, problem, "write data.train as SRC, or a list of SRC or {source: SRC, limit: N, weight: W}")
    if t.optim not in _optimizer_names():
        _fail(
            "config",
            "train.optim",
            f"unknown optimizer {brief(t.optim)}",
            f"use one of transformers' optimizers, e.g. adamw_torch, adamw_torch_fused, adafactor, sgd "
            f"({len(_optimizer_names())} in all: transformers.training_args.OptimizerNames)",
        )


#: an environment variable's name (eval.openai.api_key_env)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def remote_host(url: str) -> str | None:
    """`url`'s host when it is not this machine (a name other than localhost, or an address outside 127.0.0.0/8
    and ::1), else None. No name is resolved: a name that maps to 127.0.0.1 elsewhere still counts as remote."""
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost":
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or url
    mapped = getattr(address, "ipv4_mapped", None)
    return None if (mapped or address).is_loopback else host


def _endpoint_checks(o: EndpointConfig) -> list[tuple[str, bool, str]]:
    """eval.openai's checks, for eval.backend=openai: an http(s) base URL, a model, sane limits, prices given
    together (a host outside this machine: `_refuse_remote`)."""
    from urllib.parse import urlsplit

    url = urlsplit(o.base_url or "")
    try:
        url.port  # noqa: B018 (raises on a port that is not a number)
        valid = url.scheme in ("http", "https") and bool(url.hostname)
    except ValueError:
        valid = False
    prompt_price, completion_price = o.prompt_price_per_million, o.completion_price_per_million
    return [
        (
            "eval.openai.base_url",
            valid,
            "must be the endpoint's http:// or https:// URL, e.g. http://127.0.0.1:8080/v1",
        ),
        ("eval.openai.model", bool(o.model), "must name the model the endpoint serves"),
        (
            "eval.openai.api_key_env",
            ENV_NAME.fullmatch(o.api_key_env) is not None,
            "must be an environment variable name",
        ),
        ("eval.openai.concurrency", 1 <= o.concurrency <= 256, "must be in [1, 256]"),
        ("eval.openai.timeout", 0 < o.timeout <= 3600, "must be in (0, 3600] seconds"),
        ("eval.openai.max_retries", 0 <= o.max_retries <= 100, "must be in [0, 100]"),
        ("eval.openai.prompt_price_per_million", prompt_price is None or prompt_price >= 0, "must be >= 0 (or null)"),
        (
            "eval.openai.completion_price_per_million",
            completion_price is None or completion_price >= 0,
            "must be >= 0 (or null)",
        ),
        (
            "eval.openai.completion_price_per_million",
            (prompt_price is None) == (completion_price is None),
            "must be given with eval.openai.prompt_price_per_million (both, or neither)",
        ),
    ]


def _refuse_remote(o: EndpointConfig) -> None:
    """eval.backend=openai with a base URL outside this machine, without eval.openai.allow_remote: refused at load,
    before any request (the questions and passages would leave the machine)."""
    if o.base_url and (host := remote_host(o.base_url)) is not None and not o.allow_remote:
        _fail(
            "config",
            "eval.openai.allow_remote",
            f"eval.openai.base_url={o.base_url} is outside this machine (host {host}): the questions and their "
            "passages would be sent there, and eval.openai.allow_remote is false",
            "add eval.openai.allow_remote=true to send them (for ChatGPT: the data then leaves this machine), or "
            "use an endpoint on this machine (127.0.0.1, [::1], localhost)",
        )


#: the keys of one item of a data.train list
TRAIN_SOURCE_KEYS = ("source", "limit", "weight")


def _train_source_problems(train: Any) -> list[tuple[str, str]]:
    """(key, problem) for what is wrong with `data.train`: a source, or a non-empty list of sources, each text
    or {source: SRC, limit: N (a positive integer), weight: W (a positive number)}."""
    if train is None or isinstance(train, str):
        return []
    if not isinstance(train, list):
        return [("data.train", f"must be a source or a list of sources, got {type(train).__name__} {brief(train)}")]
    if not train:
        return [("data.train", "must list at least one source (or be null: data.dir's train_split)")]
    problems = []
    for i, item in enumerate(train):
        key = f"data.train[{i}]"
        if isinstance(item, dict):
            if unknown := [k for k in item if k not in TRAIN_SOURCE_KEYS]:
                problems.append((key, f"unknown key {brief(unknown[0])} (known: {', '.join(TRAIN_SOURCE_KEYS)})"))
            source, limit, weight = item.get("source"), item.get("limit"), item.get("weight")
            number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
                problems.append((f"{key}.limit", f"must be a positive integer (or null: all), got {brief(limit)}"))
            if weight is not None and not (number and 0 < weight < float("inf")):
                problems.append((f"{key}.weight", f"must be a positive number (or null: 1), got {brief(weight)}"))
        else:
            source = item
        if not isinstance(source, str) or not source.strip() or any("\ud800" <= c <= "\udfff" for c in source):
            shape = "a source" if not isinstance(item, dict) else "{source: SRC, ...} with a source"
            problems.append((key, f"must be {shape} (a file, a directory, hf:ID, SRC:SPLIT), got {brief(item)}"))
    return problems


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg
