"""rinna's tokenizer as rinna trained it (issue 10 §1): the ids the model sees are sentencepiece's own.

Sentencepiece models are trained here on JSQuAD text with rinna's options (unigram, byte fallback,
`<NL>` a user-defined piece) and saved as rinna lays them out (spiece.model + tokenizer_config.json
naming T5Tokenizer). Expected ids come from `sentencepiece.SentencePieceProcessor.encode`, the
definition, never from the code under test.
"""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
import torch
from conftest import SHARED, needs_data
from standins import NL, RINNA_SPECIALS, write_rinna_tokenizer

from jsquad_lora.cli import main
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.encoding.tokens import answer_ids, encode_train_example, prompt_ids
from jsquad_lora.generate.decoding import DecodingConfig
from jsquad_lora.generate.greedy import generate_answers
from jsquad_lora.generate.vocab import token_vocab
from jsquad_lora.model.load import load_tokenizer
from jsquad_lora.model.sentencepiece_tokenizer import SentencePieceTokenizer
from jsquad_lora.prompts.fewshot import select_fewshot
from jsquad_lora.prompts.templates import render_prompt

pytestmark = [needs_data(), pytest.mark.usefixtures("one_thread")]

#: texts that stress the segmentation: spaces (leading, trailing, doubled), digits, full-width
#: characters, rare characters left to byte fallback (outside the 98 % character coverage)
HARD_TEXTS = [
    "システム: ",
    " 先頭に空白、末尾にも ",
    "8,000mを超えると  二つの空白",
    "ＡＢＣ１２３　全角の英数字と空白",
    "𠮷野家の☃と🍣、鬱、齟齬、顰蹙",
    f"改行{NL}記号{NL}",
    "</s> と [SEP] は文章の中では文字",
]


@pytest.fixture(scope="module", params=[False, True], ids=["rinna", "dummy_prefix"])
def spm_dir(request, tmp_path_factory):
    """rinna's options (add_dummy_prefix off), and the same with add_dummy_prefix on and no normalisation."""
    directory = tmp_path_factory.mktemp("dummy_prefix" if request.param else "rinna")
    if request.param:
        return write_rinna_tokenizer(directory, add_dummy_prefix=True, normalization="identity")
    return write_rinna_tokenizer(directory)


@pytest.fixture(scope="module")
def sp(spm_dir):
    return spm.SentencePieceProcessor(model_file=str(spm_dir / "spiece.model"))


@pytest.fixture(scope="module")
def tokenizer(spm_dir):
    return load_tokenizer(str(spm_dir))


@pytest.fixture(scope="module")
def questions():
    return load_split(SHARED / "valid-v1.3.json").questions[:40]


def test_rinna_directories_load_through_sentencepiece(tokenizer, sp):
    assert isinstance(tokenizer, SentencePieceTokenizer)
    # special tokens keep the ids the model file gives them
    for attr, (index, text) in RINNA_SPECIALS.items():
        assert getattr(tokenizer, f"{attr}_token") == text and getattr(tokenizer, f"{attr}_token_id") == index
        assert sp.piece_to_id(text) == index
    assert len(tokenizer) == sp.get_piece_size()


def test_prompt_ids_are_sentencepiece_ids(tokenizer, sp, questions):
    for q in questions:
        prompt = render_prompt(q, "seed")
        assert prompt_ids(tokenizer, prompt) == sp.encode(prompt), q.id  # no EOS appended
        assert answer_ids(tokenizer, q.answers[0]) == sp.encode(q.answers[0]), q.id
    for text in HARD_TEXTS:
        assert prompt_ids(tokenizer, text) == sp.encode(text), text
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
    # rinna's class (T5Tokenizer) appends </s> when asked for special tokens: nothing else
    assert tokenizer(HARD_TEXTS[1])["input_ids"] == sp.encode(HARD_TEXTS[1]) + [RINNA_SPECIALS["eos"][0]]


def test_byte_fallback_is_exercised(sp):
    pieces = sp.encode(HARD_TEXTS[4], out_type=str)
    assert any(p.startswith("<0x") for p in pieces), pieces


def test_the_seed_prompt_ends_on_the_space_rinna_saw(spm_dir, tokenizer, sp, questions):
    prompt = render_prompt(questions[0], "seed")
    ids = prompt_ids(tokenizer, prompt)
    if spm_dir.name.startswith("rinna"):
        assert sp.id_to_piece(ids[-1]) == "▁"  # the trailing space of `システム: `, its own piece
        assert sp.id_to_piece(ids[0]) != "▁"  # and no space prepended
    assert NL in [sp.id_to_piece(i) for i in ids]


def test_fewshot_and_training_text(tokenizer, sp, questions):
    q, pool = questions[0], questions[1:]
    prompt = render_prompt(q, "seed", examples=select_fewshot(pool, 2, 1234, q))
    assert prompt_ids(tokenizer, prompt) == sp.encode(prompt)
    example, _ = encode_train_example(q, lambda x: render_prompt(x, "seed"), tokenizer, 4096)
    expected = sp.encode(render_prompt(q, "seed")) + sp.encode(q.answers[0]) + [RINNA_SPECIALS["eos"][0]]
    assert example.input_ids == expected
    answer = len(sp.encode(q.answers[0])) + 1
    assert example.labels == [-100] * (len(expected) - answer) + expected[-answer:]


def test_decoding_is_sentencepiece_decoding(tokenizer, sp):
    for text in HARD_TEXTS:
        ids = sp.encode(text)
        assert tokenizer.decode(ids) == sp.decode(ids), text
    # a special token between pieces: its text, or nothing with skip_special_tokens
    ids = sp.encode("東京") + [RINNA_SPECIALS["eos"][0]]
    assert tokenizer.decode(ids, skip_special_tokens=True) == sp.decode(sp.encode("東京"))
    assert tokenizer.decode(ids).endswith("</s>")


def test_token_vocab_reads_spaces_and_bytes(tokenizer, sp):
    vocab = token_vocab(tokenizer)
    space = sp.piece_to_id("▁")
    assert vocab.pieces[space] == b" "  # mid-sequence, `▁` is a space
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            assert vocab.pieces[i] == bytes([int(piece[3:5], 16)])
        elif sp.is_control(i) or sp.is_unknown(i):
            assert vocab.pieces[i] is None
        else:
            assert vocab.pieces[i] == piece.replace("▁", " ").encode(), piece
    assert vocab.exactly([NL]) == {sp.piece_to_id(NL)}


def test_save_and_reload_keep_the_ids(tokenizer, sp, tmp_path, questions):
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "spiece.model").is_file() and not (tmp_path / "tokenizer.json").exists()
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "T5Tokenizer"
    again = load_tokenizer(str(tmp_path))
    prompt = render_prompt(questions[3], "seed")
    assert isinstance(again, SentencePieceTokenizer) and prompt_ids(again, prompt) == sp.encode(prompt)
    assert again.pad_token_id == tokenizer.pad_token_id and again.eos_token_id == tokenizer.eos_token_id


def test_tokenizer_model_with_llama_class_adds_bos(spm_dir, tmp_path, sp):
    """`tokenizer.model` + LlamaTokenizer (no tokenizer.json): sentencepiece ids, BOS in front as that class adds."""
    (tmp_path / "tokenizer.model").write_bytes((spm_dir / "spiece.model").read_bytes())
    config = json.loads((spm_dir / "tokenizer_config.json").read_text()) | {"tokenizer_class": "LlamaTokenizer"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(str(tmp_path))
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert prompt_ids(tokenizer, HARD_TEXTS[2]) == [RINNA_SPECIALS["bos"][0]] + sp.encode(HARD_TEXTS[2])
    tokenizer.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.model").is_file()


def test_a_directory_with_tokenizer_json_keeps_its_fast_tokenizer(spm_dir, tmp_path):
    from transformers import AutoTokenizer

    converted = AutoTokenizer.from_pretrained(spm_dir)  # transformers' own conversion writes tokenizer.json
    converted.save_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes((spm_dir / "spiece.model").read_bytes())
    assert not isinstance(load_tokenizer(str(tmp_path)), SentencePieceTokenizer)


def test_prompt_command_prints_the_ids(spm_dir, sp, questions, capsys):
    q = questions[5]
    data = str(SHARED / "valid-v1.3.json")
    assert main(["prompt", data, "--id", q.id, "--tokenizer", str(spm_dir), "--token-ids"]) == 0
    assert json.loads(capsys.readouterr().out) == sp.encode(render_prompt(q, "seed"))
    assert main(["prompt", data, "--id", q.id, "--tokenizer", str(spm_dir), "--token-ids", "--with-answer"]) == 0
    assert json.loads(capsys.readouterr().out) == sp.encode(render_prompt(q, "seed")) + sp.encode(q.answers[0])
    assert main(["prompt", data, "--id", q.id, "--token-ids"]) == 2
    assert "--tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["greedy", "extractive"])
def test_batched_generation_equals_one_at_a_time(tokenizer, questions, mode):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        rotary_pct=1.0,
        initializer_range=0.3,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPTNeoXForCausalLM(config).eval()
    chosen = questions[::5][:6]
    prompts, passages = [render_prompt(q, "seed") for q in chosen], [q.context for q in chosen]
    batched = generate_answers(model, tokenizer, prompts, passages, DecodingConfig(8, 3, mode))
    alone = [
        generate_answers(model, tokenizer, [p], [c], DecodingConfig(8, 1, mode))[0] for p, c in zip(prompts, passages)
    ]
    assert batched == alone
    assert len(set(alone)) > 1, "the random model should answer different prompts differently"


def test_a_damaged_model_file_is_an_input_error(tmp_path, capsys):
    (tmp_path / "spiece.model").write_bytes(b"not a sentencepiece model")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    data = str(SHARED / "valid-v1.3.json")
    qid = load_split(data).questions[0].id
    assert main(["prompt", data, "--id", qid, "--tokenizer", str(tmp_path), "--token-ids"]) == 2
    err = capsys.readouterr().err
    assert "could not load the tokenizer" in err and "Traceback" not in err
