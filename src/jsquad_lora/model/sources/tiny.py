"""The model source "tiny": a small GPT-NeoX with random weights and a character tokenizer, built per run.

It needs no download: the tests and the `tiny-cpu` preset run the whole pipeline with it in seconds to
minutes. It is built once per run directory (run_dir/base, from the training questions' characters and the
seed `train.seed`), so every stage, a resume and `ask` reload the same initial weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from jsquad_lora.config.schema import ModelConfig, RunConfig
from jsquad_lora.errors import InputError
from jsquad_lora.model.source import ModelSource, register_source
from jsquad_lora.prompts.templates import NL
from jsquad_lora.util import distributed
from jsquad_lora.util.files import atomic_dir

TINY = "tiny"
#: what a tiny run's base/ holds: the initial model and its character tokenizer
TINY_BASE_FILES = ("config.json", "model.safetensors", "tokenizer.json")
TINY_SPECIALS = ["<pad>", "<unk>", "<eos>"]


def build_char_tokenizer(texts: Iterable[str]):
    """A character-level tokenizer over `texts`: every character one token, `<NL>` one token,
    EOS `<eos>`, pad `<pad>`, unseen characters `<unk>`.

    Characters, not BPE: a model trained from scratch in minutes learns to copy a span of the
    passage far more easily when every answer character is one token it has seen in the passage.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for text in texts for c in text.replace(NL, "\n")})
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + [NL])}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    # <NL> is an ordinary (not special) token: it must survive decoding so stop rules can see it
    tokenizer.add_tokens([NL])
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


def _build_tiny_base(cfg: RunConfig, base: Path, train_questions) -> None:
    """The offline tiny model (random weights) and its character tokenizer, saved in `base`."""
    import torch

    from jsquad_lora.model.lora import save_trained
    from jsquad_lora.prompts.templates import SEED_INSTRUCTION, SIDE_CHECK_PROMPT, render_prompt

    torch.manual_seed(cfg.train.seed)
    texts = [q.context + q.question + "".join(q.answers) for q in train_questions]
    texts += [SEED_INSTRUCTION, SIDE_CHECK_PROMPT, render_prompt(train_questions[0], cfg.prompt.template)]
    tokenizer = build_char_tokenizer(texts)
    with atomic_dir(base) as tmp:
        save_trained(build_tiny_model(cfg.model, tokenizer), tokenizer, tmp)


def _prepare(cfg: RunConfig, run_dir: Path, train_questions):
    """The run's tiny base: built once in base/ (by the main process), then loaded as saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = run_dir / "base"
    with distributed.main_first():
        if not (base / "model.safetensors").exists():
            _build_tiny_base(cfg, base, train_questions)
    return AutoModelForCausalLM.from_pretrained(base, use_safetensors=True), AutoTokenizer.from_pretrained(base)


def _check_run(run_dir: Path) -> None:
    base = run_dir / "base"
    if missing := [name for name in TINY_BASE_FILES if not (base / name).is_file()]:
        raise InputError(
            base,
            f"the tiny run's base model is missing ({', '.join(missing)} not found)",
            fix="a tiny run keeps its base model in base/; copy the whole run directory, or run it again "
            f"(jsquad-lora run --overwrite --output {run_dir})",
        )


register_source(
    ModelSource(
        TINY,
        "a small GPT-NeoX with random weights and a character tokenizer, built in the run directory (model.tiny_*)",
        claims=lambda cfg: cfg.name == TINY,
        resolve=lambda cfg: cfg.name,
        describe=lambda cfg: ("built here from random weights", "none (random weights)"),
        prepare=_prepare,
        run_base=lambda cfg, run_dir: str(run_dir / "base"),
        check_run=_check_run,
    )
)
