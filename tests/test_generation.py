"""Batched generation == one-at-a-time (left padding, position ids), greedy == argmax, input
order, on_batch, stop strings, and extractive decoding (always a span of the passage) over char,
byte-level BPE, sentencepiece-style (`▁`) and T5Tokenizer (rinna's class) tokenizers. Tiny random
GPT-NeoX models (and one GPT-2, whose absolute positions expose wrong position ids): garbage
answers, but deterministic ones."""

from __future__ import annotations

import itertools
import json
import os
import random

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedTokenizerFast,
    T5Tokenizer,
)

from jsquad_lora.encoding.tokens import prompt_ids
from jsquad_lora.generate.decoding import DecodingConfig
from jsquad_lora.generate.greedy import generate_answers, generate_free
from jsquad_lora.generate.vocab import token_vocab

PASSAGES = [
    "東京都は日本の首都である。",
    "富士山は静岡県と山梨県にまたがる活火山で、標高は3776メートルである。日本の最高峰として知られる。",
    "大阪城は豊臣秀吉によって築かれた。",
    "京都には多くの寺院があり、清水寺や金閣寺が有名である。" * 4,
    "AI (artificial intelligence) は人工知能の略である。",
    "明治時代に鉄道が開通し、新橋と横浜の間を走った。",
    "猫は夜行性の動物で、暗い所でもよく見える。" * 6,
    "りんごの生産量が最も多いのは青森県である。",
    "水は100度で沸騰する。",
    "源氏物語は紫式部が書いた長編物語で、平安時代の宮廷を描いている。" * 2,
]
QUESTIONS = [
    "日本の首都は？",
    "富士山の標高は？",
    "大阪城を築いたのは？",
    "有名な寺は？",
    "AIとは？",
    "鉄道はどこを走った？",
    "猫の特徴は？",
    "りんごの産地は？",
    "水が沸騰する温度は？",
    "源氏物語の作者は？",
]


def prompt(passage: str, question: str) -> str:
    return f"ユーザー: 質問に対する回答を文章から抽出してください。<NL>文章:{passage}<NL>質問:{question}<NL>システム: "


PROMPTS = [prompt(p, q) for p, q in zip(PASSAGES, QUESTIONS)]
CORPUS = PROMPTS + ["答え\n", "回答は名詞で答えてください。"]
SPECIALS = ["<pad>", "<unk>", "<eos>"]


def _fast(core: Tokenizer) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tokenizer.add_tokens(["<NL>"])  # rinna's newline marker: an ordinary token
    return tokenizer


def char_tokenizer() -> PreTrainedTokenizerFast:
    chars = sorted({c for text in CORPUS for c in text.replace("<NL>", "")})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return _fast(core)


def bytelevel_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 style: a small vocabulary, so most Japanese characters are split into partial bytes."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=330, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return _fast(core)


def metaspace_bpe() -> PreTrainedTokenizerFast:
    """Sentencepiece style: `▁` marks a preceding space (`システム: 答` → `システム:`, `▁答`)."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS))
    return _fast(core)


def t5_unigram() -> T5Tokenizer:
    """rinna's tokenizer class as transformers 5 loads it: sentencepiece Unigram, whitespace split,
    `▁` always prepended, `</s>` appended to every encoded text."""
    core = Tokenizer(models.Unigram())
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    core.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    )
    tokenizer = T5Tokenizer(vocab=[tuple(v) for v in json.loads(core.to_str())["model"]["vocab"]], extra_ids=0)
    tokenizer.add_tokens(["<NL>"])
    return tokenizer


TOKENIZERS = {"char": char_tokenizer, "bytelevel": bytelevel_bpe, "metaspace": metaspace_bpe, "t5": t5_unigram}


def tiny_model(tokenizer, seed: int = 0) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=1024,
        initializer_range=0.3,
        rotary_pct=1.0,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPTNeoXForCausalLM(config).eval()


def tiny_gpt2(tokenizer, seed: int = 0) -> GPT2LMHeadModel:
    """Learned absolute positions: unlike rotary GPT-NeoX, wrong position ids under left padding change answers."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=64,
        n_layer=2,
        n_head=4,
        initializer_range=0.3,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def setup(request):
    tokenizer = TOKENIZERS[request.param]()
    return tokenizer, tiny_model(tokenizer)


def one_at_a_time(model, tokenizer, config: DecodingConfig) -> list[str]:
    return [generate_answers(model, tokenizer, [p], [c], config)[0] for p, c in zip(PROMPTS, PASSAGES)]


@pytest.mark.parametrize("mode", ["greedy", "extractive"])
def test_batched_equals_one_at_a_time_in_input_order(setup, mode):
    tokenizer, model = setup
    config = DecodingConfig(max_new_tokens=12, batch_size=4, mode=mode)
    calls: list[tuple[list[int], list[str]]] = []
    batched = generate_answers(model, tokenizer, PROMPTS, PASSAGES, config, on_batch=lambda i, a: calls.append((i, a)))
    alone = one_at_a_time(model, tokenizer, DecodingConfig(max_new_tokens=12, batch_size=1, mode=mode))
    assert batched == alone
    assert len(set(alone)) > 2, "the random model should answer different prompts differently"
    # on_batch: every index exactly once, with the answer returned for it; batches longest prompt first
    indices = [i for batch, _ in calls for i in batch]
    assert sorted(indices) == list(range(len(PROMPTS))) and [len(b) for b, _ in calls] == [4, 4, 2]
    assert all(batched[i] == a for batch, answers in calls for i, a in zip(batch, answers))
    lengths = [len(tokenizer(PROMPTS[i])["input_ids"]) for i in indices]
    assert lengths == sorted(lengths, reverse=True)
    assert not model.training and tokenizer.padding_side == "right"


def test_batched_equals_one_at_a_time_with_absolute_positions():
    tokenizer = char_tokenizer()
    model = tiny_gpt2(tokenizer)
    config = DecodingConfig(max_new_tokens=12, batch_size=4)
    assert generate_answers(model, tokenizer, PROMPTS, None, config) == one_at_a_time(model, tokenizer, config)


def test_extractive_answers_are_spans_of_their_passage(setup):
    tokenizer, _ = setup
    rng = random.Random(0)
    for seed in range(3):
        model = tiny_model(tokenizer, seed=seed + 1)
        picks = [rng.randrange(len(PROMPTS)) for _ in range(10)]
        answers = generate_answers(
            model,
            tokenizer,
            [PROMPTS[i] for i in picks],
            [PASSAGES[i] for i in picks],
            DecodingConfig(max_new_tokens=16, batch_size=4, mode="extractive"),
        )
        assert all(a in PASSAGES[i] for a, i in zip(answers, picks)), list(zip(answers, picks))
        assert sum(bool(a) for a in answers) >= 5, answers


def test_greedy_is_plain_argmax_whatever_the_generation_config(setup):
    """The answer is the definition: argmax of the full forward pass, token by token, until EOS or
    a stop string, even when the model's generation config asks for sampling and penalties."""
    tokenizer, model = setup
    ids = prompt_ids(tokenizer, PROMPTS[1])  # the ids generation feeds (no appended EOS)
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(10):
            nxt = int(model(torch.tensor([ids + generated])).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            generated.append(nxt)
    text = tokenizer.decode(generated, skip_special_tokens=True)
    expected = text.split("<NL>")[0].split("\n")[0].strip()
    saved = model.generation_config
    model.generation_config = saved.__class__(
        **{
            **saved.to_dict(),
            "do_sample": True,
            "temperature": 5.0,
            "top_k": 3,
            "repetition_penalty": 3.0,
            "no_repeat_ngram_size": 1,
        }
    )
    try:
        model.train()
        assert generate_answers(model, tokenizer, PROMPTS[1:2], None, DecodingConfig(max_new_tokens=10)) == [expected]
        assert model.training  # restored
    finally:
        model.generation_config = saved
        model.eval()


def test_position_ids_follow_the_attention_mask(setup):
    """transformers 5 derives position ids from the left-padded mask: real tokens start at 0."""
    tokenizer, model = setup
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        generate_answers(
            model, tokenizer, PROMPTS[:4], None, DecodingConfig(max_new_tokens=3, batch_size=4, share_prefix=False)
        )
    finally:
        hook.remove()
    mask, positions = seen[0]["attention_mask"], seen[0]["position_ids"]
    assert (mask == 0).any(), "prompts of different lengths must be padded"
    for row_mask, row_positions in zip(mask, positions):
        real = row_mask.bool()
        assert row_positions[real].tolist() == list(range(int(real.sum())))
        assert not row_mask[real.nonzero().min() :].eq(0).any(), "padding must be on the left"
    assert seen[1]["position_ids"][:, -1].tolist() == mask.sum(-1).tolist()  # next step: one past the prompt


SHARED = [prompt(p, q) for p in PASSAGES[:5] for q in QUESTIONS[:3]]  # three questions per passage
SHARED_PASSAGES = [p for p in PASSAGES[:5] for _ in range(3)]


@pytest.mark.parametrize("mode", ["greedy", "extractive"])
def test_shared_prefix_answers_equal_one_at_a_time_and_run_the_passage_once(setup, mode):
    """A passage's questions: the prompt up to the question is run once for all of them, and every
    answer is the one generating that prompt alone gives; rows sit at the positions they have alone."""
    tokenizer, model = setup
    seen, prefills = [], []
    hooks = [
        model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs), with_kwargs=True),
        model.base_model.register_forward_pre_hook(lambda _, args, kwargs: prefills.append(kwargs), with_kwargs=True),
    ]
    try:
        shared = generate_answers(
            model, tokenizer, SHARED, SHARED_PASSAGES, DecodingConfig(max_new_tokens=8, batch_size=6, mode=mode)
        )
    finally:
        for hook in hooks:
            hook.remove()
    alone = [
        generate_answers(
            model, tokenizer, [p], [c], DecodingConfig(max_new_tokens=8, batch_size=1, mode=mode, share_prefix=False)
        )[0]
        for p, c in zip(SHARED, SHARED_PASSAGES)
    ]
    assert shared == alone and len(set(alone)) > 2
    # prompt tokens through the model: one unpadded sequence per passage, its prefix once, then
    # each question's rest but its last token (generate runs that one)
    encoded = [prompt_ids(tokenizer, p) for p in SHARED]
    lengths = [len(ids) for ids in encoded]
    packed = [k for k in prefills if k.get("input_ids") is not None and k["input_ids"].shape[1] > 1]
    assert len(packed) == 5 and all(k["input_ids"].shape[0] == 1 and k["attention_mask"].dim() == 4 for k in packed)
    groups = [encoded[3 * g : 3 * g + 3] for g in range(5)]
    expected_rows = {}
    for group in groups:  # its rows in any order: prefix, then each rest but its last token
        c = len(os.path.commonprefix(group))
        for order in itertools.permutations(group):
            ids = group[0][:c] + [t for e in order for t in e[c:-1]]
            expected_rows[tuple(ids)] = list(range(c)) + [p for e in order for p in range(c, len(e) - 1)]
    seen_rows = {tuple(k["input_ids"][0].tolist()): k["position_ids"][0].tolist() for k in packed}
    assert all(expected_rows.get(ids) == positions for ids, positions in seen_rows.items())  # positions alone
    assert sum(map(len, seen_rows)) < sum(lengths) * 0.6, (sum(map(len, seen_rows)), sum(lengths))
    # generate then runs only the last prompt token of every row, at its position alone
    assert all(k["input_ids"].shape[1] == 1 for k in seen), "generate re-ran prompt tokens the prefill had cached"
    for k in seen:
        if "position_ids" in k:
            mask, width = k["attention_mask"], k["input_ids"].shape[1]
            expected = (mask.cumsum(-1) - 1)[:, -width:]
            real = mask[:, -width:].bool()
            assert k["position_ids"][real].tolist() == expected[real].tolist()


class ScriptedLM(GPTNeoXForCausalLM):
    """Next token = `script[last token]` (EOS when absent), whatever comes before; `second` is the
    runner-up everywhere (what extractive decoding picks when the script's token is not allowed)."""

    script: dict[int, int] = {}
    second: int | None = None
    calls = 0

    def forward(self, input_ids=None, **kwargs):
        type(self).calls += 1
        out = super().forward(input_ids=input_ids, **kwargs)
        nxt = torch.tensor([self.script.get(int(t), self.config.eos_token_id) for t in input_ids[:, -1]])
        logits = torch.full_like(out.logits, -10.0)
        if self.second is not None:
            logits[:, -1, self.second] = 0.0
        logits[torch.arange(len(nxt)), -1, nxt] = 10.0
        out.logits = logits
        return out


@pytest.mark.parametrize(
    "after, stops, expected",
    [
        ("<NL>", ("<NL>", "\n"), "答え"),
        ("\n", ("<NL>", "\n"), "答え"),
        ("<eos>", ("<NL>", "\n"), "答え"),
        ("<NL>", (), "答え<NL>答え<NL>答え<NL>"),
    ],
)
def test_stop_strings_and_eos_cut_the_answer(after, stops, expected):
    tokenizer = char_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(0)
    model = ScriptedLM(tiny_model(tokenizer).config).eval()
    ScriptedLM.script = {ids(" "): ids("答"), ids("答"): ids("え"), ids("え"): ids(after), ids("<NL>"): ids("答")}
    ScriptedLM.calls = 0
    answers = generate_answers(
        model, tokenizer, PROMPTS[:2], None, DecodingConfig(max_new_tokens=9, stop_strings=stops)
    )
    assert answers == [expected, expected]
    # generate's forward calls (the shared-prefix prefill runs the decoder alone, without the head):
    # stopped as soon as the stop string appeared
    assert ScriptedLM.calls == (9 if not stops else 3)
    # free generation stops at EOS only
    expected_free = "答え<NL>答え<NL>" if after == "<NL>" else "答え"  # 6 tokens; a trailing "\n" is stripped
    assert generate_free(model, tokenizer, PROMPTS[0], max_new_tokens=6) == expected_free


def test_extractive_blocks_text_outside_the_passage():
    tokenizer = char_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(0)
    model = ScriptedLM(tiny_model(tokenizer).config).eval()
    ScriptedLM.script = {ids(" "): ids("答"), ids("答"): ids("え"), ids("え"): ids("<NL>")}
    ScriptedLM.second = ids("京")
    config = DecodingConfig(max_new_tokens=8, mode="extractive")
    try:
        passage = "答えは東京"
        answer = generate_answers(model, tokenizer, [prompt(passage, "何？")], [passage], config)[0]
        assert answer == "答え"  # the model's own choice: a span, stopped by <NL>
        # 答 is not in the passage: the runner-up 京 is taken, then EOS (allowed after one character)
        answer = generate_answers(model, tokenizer, [prompt("東京です", "何？")], ["東京です"], config)[0]
        assert answer == "京"
        # greedy mode is not constrained
        free = generate_answers(model, tokenizer, [prompt("東京です", "何？")], None, DecodingConfig(max_new_tokens=8))[
            0
        ]
        assert free == "答え"
    finally:
        ScriptedLM.second = None


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_vocab_index_matches_brute_force(name):
    tokenizer = TOKENIZERS[name]()
    vocab = token_vocab(tokenizer)
    assert vocab is token_vocab(tokenizer)  # cached per tokenizer
    pieces = vocab.pieces
    for passage in PASSAGES:
        data = passage.encode()
        assert vocab.first_pieces(data) == {i for i, p in enumerate(pieces) if p is not None and p.lstrip() in data}
        for answer in (data[:3], data[3:9], "である".encode(), data[:4]):  # data[:4]: a character cut in two
            assert vocab.next_pieces(data, answer) == {i for i, p in enumerate(pieces) if p and answer + p in data}
    if name == "bytelevel":
        assert any(p is not None and not _decodes(p) for p in pieces), "expected partial-character tokens"


def _decodes(piece: bytes) -> bool:
    try:
        piece.decode()
        return True
    except UnicodeDecodeError:
        return False


def test_config_validation():
    with pytest.raises(ValueError):
        DecodingConfig(mode="beam")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DecodingConfig(batch_size=0)
    with pytest.raises(ValueError):
        generate_answers(None, None, ["x"], None, DecodingConfig(mode="extractive"))


@pytest.mark.parametrize("passage, expected", [("答えは東京", "答え"), ("答え は東京", "答え は"), ("東京", "")])
def test_extractive_whitespace_policy(passage, expected):
    """The first token may carry the space after `システム:` (`▁答え`); later spaces must be in the passage."""
    tokenizer = metaspace_bpe()
    ids = tokenizer.convert_tokens_to_ids
    assert tokenizer.convert_ids_to_tokens(tokenizer(prompt(passage, "何？"))["input_ids"])[-1] == "▁"
    torch.manual_seed(0)
    model = ScriptedLM(tiny_model(tokenizer).config).eval()
    ScriptedLM.script, ScriptedLM.second = {ids("▁"): ids("▁答え"), ids("▁答え"): ids("▁は")}, tokenizer.eos_token_id
    try:
        answer = generate_answers(
            model, tokenizer, [prompt(passage, "何？")], [passage], DecodingConfig(max_new_tokens=4, mode="extractive")
        )[0]
        assert answer == expected if expected else answer in passage
    finally:
        ScriptedLM.second = None


def test_growing_cache_layer_appends_like_a_dynamic_layer():
    from transformers.cache_utils import DynamicLayer

    from jsquad_lora.generate.prefix_cache import GrowingLayer

    torch.manual_seed(0)
    keys, values = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    growing, plain = GrowingLayer(keys, values, room=2), DynamicLayer()
    plain.update(keys, values)
    buffer = growing.key_buffer
    for step in range(4):  # two steps fit the room, then it grows by concatenation
        new = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
        for got, expected in zip(growing.update(*new), plain.update(*new)):
            assert torch.equal(got, expected)
        assert (growing.keys.data_ptr() == buffer.data_ptr()) == (step < 2)
    growing = GrowingLayer(keys, values, room=4)
    growing.batch_select_indices(torch.tensor([2, 0]))  # replaced keys: appending must not write the old buffer
    new = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    got_keys, _ = growing.update(*new)
    assert torch.equal(got_keys, torch.cat([keys[[2, 0]], new[0]], dim=2))
