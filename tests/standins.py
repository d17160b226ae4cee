"""Small random stand-ins of the real model families, saved as model directories the way their
publishers lay them out: a GPT-NeoX with a rinna-style sentencepiece tokenizer (`spiece.model`,
tokenizer_config.json naming T5Tokenizer, no tokenizer.json) and a Qwen2 with a byte-level BPE
tokenizer and Qwen's chat template. The tokenizers are trained here on JSQuAD text."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from conftest import SHARED

NL = "<NL>"
#: rinna's special tokens and their ids in its sentencepiece model
RINNA_SPECIALS = {"pad": (0, "[PAD]"), "unk": (1, "<unk>"), "bos": (2, "<s>"), "eos": (3, "</s>")}
#: a Qwen-style chat template (the turn format of Qwen2.5 instruct, system turn aside)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def jsquad_texts(articles: int = 24) -> list[str]:
    """Passages (title removed), questions and answers of the first `articles` articles of the test split."""
    data = json.loads((SHARED / "test-v1.3.json").read_text(encoding="utf-8"))
    texts = []
    for article in data["data"][:articles]:
        for paragraph in article["paragraphs"]:
            texts.append(paragraph["context"].split(" [SEP] ", 1)[-1])
            for qa in paragraph["qas"]:
                texts += [qa["question"], qa["answers"][0]["text"]]
    return texts


def train_sentencepiece(path: Path, *, add_dummy_prefix: bool, normalization: str = "nmt_nfkc", vocab: int = 1800):
    """A unigram sentencepiece model trained on JSQuAD text with rinna's options: byte fallback,
    `<NL>` a user-defined piece, [PAD]/<unk>/<s>/</s> at 0-3, digits split. A character coverage
    below 1 leaves rare characters to byte fallback."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(jsquad_texts()),
        model_writer=model,
        vocab_size=vocab,
        model_type="unigram",
        character_coverage=0.98,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=add_dummy_prefix,
        normalization_rule_name=normalization,
        remove_extra_whitespaces=False,
        user_defined_symbols=[NL],
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="[PAD]",
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def write_rinna_tokenizer(directory: Path, *, add_dummy_prefix: bool = False, **options) -> Path:
    """rinna's tokenizer files: spiece.model and tokenizer_config.json (T5Tokenizer), nothing else."""
    train_sentencepiece(directory / "spiece.model", add_dummy_prefix=add_dummy_prefix, **options)
    config = {
        "tokenizer_class": "T5Tokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "extra_ids": 0,
        "additional_special_tokens": [],
        "do_lower_case": False,
        "sp_model_kwargs": {},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def rinna_standin(directory: Path, seed: int = 0) -> Path:
    """A random GPT-NeoX shaped like rinna 3.6B in miniature (sequential residual, full rotary, untied head),
    with rinna's tokenizer files."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    write_rinna_tokenizer(directory)
    import sentencepiece as spm

    size = spm.SentencePieceProcessor(model_file=str(directory / "spiece.model")).get_piece_size()
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=2048,
        rotary_pct=1.0,
        use_parallel_residual=False,
        tie_word_embeddings=False,
        initializer_range=0.3,
        bos_token_id=RINNA_SPECIALS["bos"][0],
        eos_token_id=RINNA_SPECIALS["eos"][0],
        pad_token_id=RINNA_SPECIALS["pad"][0],
    )
    GPTNeoXForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return directory


def qwen_tokenizer():
    """Byte-level BPE trained on JSQuAD text, Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(
        jsquad_texts(12) + ["質問に対する回答を文章から抽出してください。\n文章:\n質問:", "assistant\nuser\n"],
        trainers.BpeTrainer(
            vocab_size=800, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def qwen_standin(directory: Path, seed: int = 0) -> Path:
    """A random Qwen2 in miniature (grouped-query attention, tied embeddings) with a chat-template tokenizer;
    its generation config ends on <|im_end|> and <|endoftext|>, as Qwen2.5 instruct's does."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = qwen_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def randomise_lora(model, seed: int = 0) -> None:
    """LoRA's B matrices start at zero (the adapter does nothing): give them random values."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
