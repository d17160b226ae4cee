"""Gemma-3-shaped models: sliding-window shared-prefix rows, the answer-only loss, GGUF sources,
the extractive candidate head, and a LoRA run end to end.

Every model here is a tiny random one (hidden 32, 8-wide heads, a character vocabulary) so the
file runs in seconds on 2 CPU cores. The Gemma 3 models mix sliding-window and global layers
with a window of 6 tokens, far shorter than any prompt, so a mask that ignored the window (or
measured it in row indices instead of positions) would change the numbers.
"""

import contextlib
import json
import unittest.mock
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_data

from jsquad_lora.config.schema import LoraSettings, ModelConfig
from jsquad_lora.data.question import Question
from jsquad_lora.encoding.collators import AnswerOnlyCollator, SharedPrefixCollator
from jsquad_lora.encoding.packing import share_prefixes
from jsquad_lora.encoding.tokens import Encoded, encode_train_set
from jsquad_lora.model.sources.tiny import build_char_tokenizer, build_tiny_model
from jsquad_lora.prompts.templates import SEED_INSTRUCTION, SIDE_CHECK_PROMPT, render_prompt

WINDOW = 6
BODY = (
    "人体は、呼吸や心拍数を速め、血液組成を変化させて高度に順応することができる。"
    "しかし、8,000mを超えると、人体は適応できず、死に至ることもある。"
)
OTHER = "梅雨は東アジアの気象現象である。初夏に雨の多い時期が続く。"


def _q(qid: str, context: str, question: str, answer: str) -> Question:
    return Question(qid, "", context, question, (answer,), (context.index(answer),))


#: three questions of one passage (one shared-prefix row of 3 branches) and one of another passage
QUESTIONS = [
    _q("q1", BODY, "何mを超えると適応できなくなるか?", "8,000m"),
    _q("q2", BODY, "何を速めるか?", "呼吸や心拍数"),
    _q("q3", BODY, "何が変化するか?", "血液組成"),
    _q("q4", OTHER, "梅雨はどこの現象か?", "東アジア"),
]
TOKENIZER = build_char_tokenizer([render_prompt(q, "seed", with_answer=True) for q in QUESTIONS])


def render(q: Question) -> str:
    return render_prompt(q, "seed")


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these models are so small that threads only add synchronisation, and on
    a busy machine a bfloat16 matmul waiting for a second OpenMP thread took 8 ms instead of 0.01
    (a 64-token generation: 14 s with 2 threads, 0.2 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gemma(
    tokenizer, *, layer_types=("sliding_attention", "full_attention", "sliding_attention"), softcap=None, seed=0
):
    """A random Gemma 3 text model in eval mode (dropout off), float32, sdpa attention."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=len(layer_types),
        layer_types=list(layer_types),
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,  # sharper attention than the default 256 with 8-wide heads: the window matters more
        sliding_window=WINDOW,
        max_position_embeddings=1024,
        final_logit_softcapping=softcap,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).to(torch.float32).eval()


def tiny_neox(tokenizer, seed=0):
    torch.manual_seed(seed)
    return build_tiny_model(
        ModelConfig(tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_intermediate=64), tokenizer
    ).eval()


def examples_and_rows():
    """Training examples of QUESTIONS (prompt + answer + EOS) and their shared-prefix rows."""
    examples, truncated = encode_train_set(QUESTIONS, render, TOKENIZER, max_length=1024)
    assert truncated == 0
    rows = share_prefixes(examples, [q.context for q in QUESTIONS])
    assert [max(r.segments) for r in rows] == [3, 1]  # BODY's three questions share one row
    return examples, rows


def token_losses(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """Next-token cross-entropy at every labelled position of one sequence (0 elsewhere)."""
    targets = torch.tensor(labels[1:])
    return F.cross_entropy(logits[: len(labels) - 1].float(), targets, ignore_index=-100, reduction="none")


def separate_losses(model, example: Encoded) -> torch.Tensor:
    """The labelled tokens' losses of one example run alone (the model's own causal/sliding mask)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
    keep = torch.tensor(example.labels[1:]) != -100
    return token_losses(logits, example.labels)[keep]


def branch_losses(row_logits: torch.Tensor, row) -> dict[int, torch.Tensor]:
    """The labelled tokens' losses of each branch of a shared-prefix row, branch number → losses.
    A labelled token and the position predicting it are in the same branch (a branch's first
    token is a prompt token and carries no label)."""
    losses = token_losses(row_logits, row.labels)
    segments, keep = torch.tensor(row.segments[1:]), torch.tensor(row.labels[1:]) != -100
    return {k: losses[keep & (segments == k)] for k in range(1, max(row.segments) + 1)}


def row_logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=batch["attention_mask"],
            use_cache=False,
        ).logits


# ---------------------------------------------------------------- 1. sliding-window shared-prefix rows


def test_sliding_window_of_gemma_configs():
    from jsquad_lora.encoding.attention import sliding_window

    assert sliding_window(tiny_gemma(TOKENIZER).config) == WINDOW
    assert sliding_window(tiny_gemma(TOKENIZER, layer_types=("full_attention",)).config) is None  # no sliding layer
    assert sliding_window(tiny_neox(TOKENIZER).config) is None


def test_shared_prefix_rows_honour_the_sliding_window():
    """Each branch of a shared-prefix row gets, token for token, the losses its example gets alone,
    on a model whose sliding layers see only the last 6 positions: the window is counted in
    position ids (branch k >= 2 sits far from the prefix in the row, not in positions).
    Without the window (a plain 4-D mask for every layer) the same rows give other losses."""
    model = tiny_gemma(TOKENIZER)
    examples, rows = examples_and_rows()
    assert min(len(e.input_ids) for e in examples) > 10 * WINDOW
    alone = [separate_losses(model, e) for e in examples]
    members = {0: examples[:3], 1: examples[3:]}  # row → its examples, in branch order

    collator = SharedPrefixCollator(TOKENIZER.pad_token_id, sliding_window=model.config.sliding_window)
    batch = collator([vars(r) for r in rows])  # two rows of different widths: the second is right-padded
    assert isinstance(batch["attention_mask"], dict) and set(batch["attention_mask"]) == {
        "full_attention",
        "sliding_attention",
    }
    logits = row_logits(model, batch)
    for r, row in enumerate(rows):
        got = branch_losses(logits[r], row)
        for k, example in enumerate(members[r], 1):
            torch.testing.assert_close(got[k], alone[examples.index(example)], atol=1e-5, rtol=1e-5)

    # the same rows with no window: sliding layers see the whole prefix, and the losses move
    plain = SharedPrefixCollator(TOKENIZER.pad_token_id, sliding_window=None)([vars(r) for r in rows])
    assert isinstance(plain["attention_mask"], torch.Tensor)
    windowless = branch_losses(row_logits(model, plain)[0], rows[0])
    for k in (1, 2, 3):
        assert not torch.allclose(windowless[k], alone[k - 1], atol=1e-4), f"branch {k}: the window made no difference"


# ---------------------------------------------------------------- 2. answer-only loss


def neox_batch():
    examples, _ = examples_and_rows()
    batch = AnswerOnlyCollator(TOKENIZER.pad_token_id)([vars(e) for e in examples])
    assert (batch["attention_mask"] == 0).any()  # right padding present
    return batch


def gemma_batch(model):
    _, rows = examples_and_rows()
    return SharedPrefixCollator(TOKENIZER.pad_token_id, sliding_window=model.config.sliding_window)(
        [vars(r) for r in rows]
    )


def _model_and_batch(kind: str):
    if kind == "neox":
        return tiny_neox(TOKENIZER), neox_batch()
    model = tiny_gemma(TOKENIZER, softcap=3.0)  # a small cap that bends the logits: the softcap path is exercised
    return model, gemma_batch(model)


@pytest.mark.parametrize("kind", ["neox", "gemma"])
def test_answer_only_loss_equals_the_model_loss(kind):
    """(a) GPT-NeoX, right-padded batch; (b) Gemma 3 with logit softcapping, shared-prefix rows
    (the mask is a dict per layer type); (c) with `num_items`: the summed token losses / num_items."""
    from jsquad_lora.train.losses import answer_only_loss

    model, batch = _model_and_batch(kind)
    with torch.no_grad():
        full = model(**batch)
        torch.testing.assert_close(answer_only_loss(model, batch), full.loss, atol=1e-5, rtol=1e-5)

        # the sum over labelled tokens, from the full logits
        logits, labels = full.logits[:, :-1], batch["labels"][:, 1:]
        total = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        labelled = int((labels != -100).sum())
        for num_items in (labelled + 7, torch.tensor(labelled + 7)):  # the Trainer passes a tensor
            torch.testing.assert_close(
                answer_only_loss(model, batch, num_items), total / (labelled + 7), atol=1e-5, rtol=1e-5
            )
        # and what the model itself computes for a gradient-accumulation count
        torch.testing.assert_close(
            answer_only_loss(model, batch, labelled + 7),
            model(**batch, num_items_in_batch=labelled + 7).loss,
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("kind", ["neox", "gemma"])
def test_answer_only_loss_gradient_matches_on_lora(kind):
    """Through a LoRA adapter (all linear layers), the answer-only loss gives the full loss's gradient."""
    from jsquad_lora.model.lora import attach_lora
    from jsquad_lora.train.losses import answer_only_loss

    model, batch = _model_and_batch(kind)
    model = attach_lora(model, LoraSettings(target_modules=["all-linear"], dropout=0.0))
    torch.manual_seed(1)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert params and all("lora_" in n for n in params)
    with torch.no_grad():  # LoRA B starts at zero, which would leave every A gradient zero
        for name, p in params.items():
            if "lora_B" in name:
                p.normal_(0, 0.1)

    def grads(loss_fn):
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
        return {n: p.grad.detach().clone() for n, p in params.items()}

    ours = grads(lambda: answer_only_loss(model, batch))
    reference = grads(lambda: model(**batch).loss)
    assert any(g.abs().sum() > 0 for n, g in reference.items() if "lora_A" in n)
    for name in params:
        torch.testing.assert_close(ours[name], reference[name], atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("kind", ["neox", "gemma"])
def test_lora_in_the_top_layers_only_leaves_the_layers_below_out_of_backpropagation(kind):
    """`lora.top_layers=1`: LoRA in the last decoder layer only, for all-linear and for named modules; the layers
    below build no autograd graph (their backward pass is skipped: the speed lever), and the answer-only loss
    still gives the full loss's gradient; more layers than the model has is an input error naming the key."""
    from jsquad_lora.errors import InputError
    from jsquad_lora.model.lora import attach_lora
    from jsquad_lora.train.losses import answer_only_loss

    named = ["query_key_value", "dense_4h_to_h"] if kind == "neox" else ["q_proj", "down_proj"]
    for targets in (["all-linear"], named):
        model, batch = _model_and_batch(kind)
        layers = model.config.num_hidden_layers
        model = attach_lora(model, LoraSettings(target_modules=targets, dropout=0.0, top_layers=1))
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert params and all("lora_" in n and f".{layers - 1}." in n for n in params), sorted(params)
        everywhere = attach_lora(_model_and_batch(kind)[0], LoraSettings(target_modules=targets, dropout=0.0))
        top = {n for n, p in everywhere.named_parameters() if p.requires_grad and f".{layers - 1}." in n}
        assert set(params) == top  # every targeted module of the last layer, and nothing else
        with torch.no_grad():
            for name, p in params.items():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        graph = []
        decoder_layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)][0]
        hooks = [
            layer.register_forward_hook(lambda m, i, o: graph.append(o[0].requires_grad)) for layer in decoder_layers
        ]
        ours = torch.autograd.grad(answer_only_loss(model, batch), list(params.values()))
        assert graph == [False] * (layers - 1) + [True]
        for hook in hooks:
            hook.remove()
        reference = torch.autograd.grad(model(**batch).loss, list(params.values()))
        for name, a, b in zip(params, ours, reference):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    with pytest.raises(InputError, match="lora.top_layers"):
        attach_lora(_model_and_batch(kind)[0], LoraSettings(top_layers=layers + 1))


def test_a_frozen_head_is_cast_once_under_autocast_with_the_same_loss_and_gradients():
    """Under bf16 autocast the frozen output layer's bfloat16 copy is made once and reused (autocast itself casts a
    frozen weight again at every call): the same loss and LoRA gradients as autocast's own head, bit for bit; a
    changed weight is cast again; a trainable head (full fine-tuning) is left to autocast."""
    from jsquad_lora.model.lora import attach_lora
    from jsquad_lora.train.losses import answer_only_loss, drop_cached_head, head_logits

    model = tiny_gemma(TOKENIZER, softcap=3.0)
    batch = gemma_batch(model)
    model = attach_lora(model, LoraSettings(target_modules=["all-linear"], dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    head = model.get_base_model().get_output_embeddings()
    assert not head.weight.requires_grad
    hidden = torch.randn(5, head.weight.shape[1])

    def loss_and_grads(plain_head: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if plain_head:
                with unittest.mock.patch("jsquad_lora.train.losses.head_logits", lambda h, x: h(x)):
                    loss = answer_only_loss(model, batch)
            else:
                loss = answer_only_loss(model, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(True), loss_and_grads(False)
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = head_logits(head, hidden)
        cached = head._autocast_weight[1]
        assert torch.equal(first, head(hidden)) and head_logits(head, hidden).dtype == torch.bfloat16
        assert head._autocast_weight[1] is cached  # not cast again
        with torch.no_grad():
            head.weight.mul_(2)  # a changed weight (its version counter moves): cast again
        assert torch.equal(head_logits(head, hidden), head(hidden)) and head._autocast_weight[1] is not cached
    assert torch.equal(head_logits(head, hidden), head(hidden))  # outside autocast: the head itself
    drop_cached_head(model)  # what training does when it ends: the copy is not kept for generation
    assert not hasattr(head, "_autocast_weight")
    trainable, x = torch.nn.Linear(4, 3, bias=False), torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(head_logits(trainable, x), trainable(x)) and not hasattr(trainable, "_autocast_weight")


def test_frozen_linears_cast_once_give_the_same_loss_and_gradients_and_leave_the_weights_alone():
    """Within `frozen_linears_cast`, each frozen base layer under LoRA casts its weight to bf16 once (autocast
    casts a frozen weight again at every call): the same loss and LoRA gradients as autocast's own casts, bit for
    bit, at every step; a float32 forward pass in the block uses the float32 weights; no parameter is touched, and
    afterwards the layers carry neither the patched forward nor the copies."""
    from jsquad_lora.model.lora import attach_lora
    from jsquad_lora.train.frozen_casts import frozen_linears_cast
    from jsquad_lora.train.losses import answer_only_loss

    model = tiny_gemma(TOKENIZER, softcap=3.0)
    batch = gemma_batch(model)
    model = attach_lora(model, LoraSettings(target_modules=["all-linear"], dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    before = {n: (p.data_ptr(), p.dtype, p.data.clone()) for n, p in model.named_parameters()}
    base_layers = [m for n, m in model.named_modules() if n.endswith("base_layer")]

    def loss_and_grads(autocast=True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = answer_only_loss(model, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    reference = [loss_and_grads(), loss_and_grads(autocast=False)]
    with frozen_linears_cast(model) as patched:
        got = [loss_and_grads(), loss_and_grads(), loss_and_grads(autocast=False)]
        assert all(m.__dict__["_autocast_weight"][1].dtype == torch.bfloat16 for m in base_layers)
    assert patched == len(base_layers) > 0
    for (loss_a, grads_a), (loss_b, grads_b) in zip([reference[0], reference[0], reference[1]], got):
        assert loss_a.dtype == loss_b.dtype and torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
        assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    for name, p in model.named_parameters():  # the same float32 tensors, unchanged
        assert (p.data_ptr(), p.dtype) == before[name][:2] and torch.equal(p.data, before[name][2]), name
    head = model.get_output_embeddings()  # its copy is head_logits' (freed by drop_cached_head)
    leftover = [
        n
        for n, m in model.named_modules()
        if "forward" in m.__dict__ or (m is not head and "_autocast_weight" in m.__dict__)
    ]
    assert not leftover, leftover
    with frozen_linears_cast(model, enabled=False) as patched:
        assert patched == 0 and not any("forward" in m.__dict__ for m in model.modules())


# ---------------------------------------------------------------- 3. GGUF file → cached model directory

#: a sentencepiece-style vocabulary (the control tokens first, then `▁` and characters)
GGUF_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "▁"] + sorted(set(BODY))


def write_tiny_gguf(path: Path, model) -> None:
    """A float32 Gemma 3 GGUF file of `model`, as llama.cpp's converter lays it out: llama.cpp tensor
    names, the tied output layer left out, RMS-norm weights stored as 1 + w, and a sentencepiece
    ("llama") vocabulary with scores and token types."""
    import gguf
    import numpy as np

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_sliding_window(cfg.sliding_window)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(GGUF_TOKENS)
    writer.add_token_scores([0.0] * len(GGUF_TOKENS))
    writer.add_token_types(
        [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.UNKNOWN] + [gguf.TokenType.NORMAL] * (len(GGUF_TOKENS) - 4)
    )
    writer.add_pad_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_bos_token_id(2)
    writer.add_unk_token_id(3)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings: llama.cpp writes no output.weight then
        stem, suffix = name.rsplit(".", 1)
        gguf_name = names.get_name(stem)
        assert gguf_name, name
        array = tensor.numpy().astype(np.float32)
        writer.add_tensor(f"{gguf_name}.{suffix}", array + 1 if "norm" in gguf_name else array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def gguf_source(tmp_path_factory):
    """(directory holding tiny.gguf, the model it was written from)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    # Default layer types: a GGUF does not store them, so the loaded model gets the defaults too
    config = Gemma3TextConfig(
        vocab_size=len(GGUF_TOKENS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=WINDOW,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # random norm weights, so a wrong 1 + w offset would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.1)
    directory = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(directory / "tiny.gguf", model)
    return directory, model


def test_gguf_converts_once_into_a_model_directory(gguf_source, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jsquad_lora.model import gguf as modeling
    from jsquad_lora.model.source import resolve_model_source

    source_dir, source_model = gguf_source
    monkeypatch.setenv("JSQUAD_LORA_CACHE", str(tmp_path / "cache"))
    converted = Path(resolve_model_source(ModelConfig(name=str(source_dir), gguf_file="tiny.gguf")))
    assert converted.parent == tmp_path / "cache" / "models"
    assert (converted / "config.json").is_file() and (converted / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())  # plain float weights

    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]])  # longer than the window
    with torch.no_grad():
        from_dir = AutoModelForCausalLM.from_pretrained(converted).eval()(ids).logits
        from_gguf = (
            AutoModelForCausalLM.from_pretrained(source_dir, gguf_file="tiny.gguf", dtype=torch.float32)
            .eval()(ids)
            .logits
        )
        torch.testing.assert_close(from_dir, from_gguf, atol=0, rtol=0)
        torch.testing.assert_close(
            from_dir, source_model(ids).logits, atol=1e-5, rtol=1e-5
        )  # the fixture writes what it means to
    text = "人体は呼吸を速め"
    assert (
        AutoTokenizer.from_pretrained(converted)(text)["input_ids"]
        == AutoTokenizer.from_pretrained(source_dir, gguf_file="tiny.gguf")(text)["input_ids"]
    )

    # a second call (same file, here by absolute path) reuses the directory: no conversion, no rewrite
    stamp = (converted / "model.safetensors").stat().st_mtime_ns

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(modeling, "convert_gguf", no_conversion)
    for cfg in (
        ModelConfig(name=str(source_dir), gguf_file="tiny.gguf"),
        ModelConfig(gguf_file=str(source_dir / "tiny.gguf")),
    ):
        assert Path(resolve_model_source(cfg)) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_missing_gguf_file_is_an_input_error(tmp_path, monkeypatch):
    from jsquad_lora.errors import InputError
    from jsquad_lora.model.source import resolve_model_source

    monkeypatch.setenv("JSQUAD_LORA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError) as err:
        resolve_model_source(ModelConfig(name=str(tmp_path), gguf_file="absent.gguf"))
    assert str(tmp_path / "absent.gguf") in str(err.value) and "model.gguf_file" in str(err.value)
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


# ---------------------------------------------------------------- 4. extractive candidate head


def test_candidate_head_computes_only_the_candidates():
    from jsquad_lora.generate.extractive import CandidateHead

    torch.manual_seed(0)
    ids = [0, 3, 4, 17, 41]
    for head in (torch.nn.Linear(16, 50, bias=False), torch.nn.Linear(16, 50, bias=True)):
        hidden = torch.randn(2, 5, 16)[:, -2:]  # a non-contiguous slice, as generation hands the head
        with torch.no_grad():
            full, restricted = head(hidden), CandidateHead(head, ids)(hidden)
        assert restricted.shape == full.shape
        torch.testing.assert_close(restricted[..., ids], full[..., ids])
        others = [i for i in range(50) if i not in ids]
        assert torch.isneginf(restricted[..., others]).all()


def test_head_restriction_is_undone_after_the_block():
    from jsquad_lora.generate.extractive import CandidateHead, head_restricted_to

    model = tiny_neox(TOKENIZER)
    head = model.get_output_embeddings()
    with pytest.raises(RuntimeError), head_restricted_to(model, [1, 2, 3]):
        assert isinstance(model.get_output_embeddings(), CandidateHead)
        raise RuntimeError("inside the block")
    assert model.get_output_embeddings() is head
    with head_restricted_to(model, None):  # no candidates (greedy decoding): the head stays
        assert model.get_output_embeddings() is head


@pytest.mark.parametrize("kind", ["neox", "gemma"])
def test_extractive_answers_are_the_same_with_the_candidate_head(kind, monkeypatch):
    """The head restricted to the passages' tokens changes no answer (Gemma: with logit softcapping,
    which maps the restricted head's -inf to -cap, still below every allowed token once masked)."""
    from jsquad_lora.generate import extractive
    from jsquad_lora.generate import greedy as generation
    from jsquad_lora.generate.decoding import DecodingConfig
    from jsquad_lora.generate.greedy import generate_answers

    model = tiny_neox(TOKENIZER) if kind == "neox" else tiny_gemma(TOKENIZER, softcap=3.0)
    prompts, passages = [render(q) for q in QUESTIONS], [q.context for q in QUESTIONS]
    config = DecodingConfig(mode="extractive", max_new_tokens=8, batch_size=3)

    calls = []
    forward = extractive.CandidateHead.forward
    monkeypatch.setattr(extractive.CandidateHead, "forward", lambda self, h: calls.append(1) or forward(self, h))
    restricted = generate_answers(model, TOKENIZER, prompts, passages, config)
    assert calls, "the restricted head was never used"

    monkeypatch.setattr(generation, "head_restricted_to", lambda model, ids: contextlib.nullcontext())
    reference = generate_answers(model, TOKENIZER, prompts, passages, config)
    assert restricted == reference
    assert all(a in p for a, p in zip(reference, passages)) and any(reference)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_greedy_answers_with_shared_prefixes_and_the_screened_head_equal_one_at_a_time(softcap, monkeypatch):
    """Prompts far wider than the sliding window: the packed prefill (one unpadded sequence per
    passage, its cache gathered per row) and the bfloat16-screened head give every prompt the
    answer it gets alone, unshared, with the plain float32 head."""
    from jsquad_lora.generate import screened_head
    from jsquad_lora.generate.decoding import DecodingConfig
    from jsquad_lora.generate.greedy import generate_answers
    from jsquad_lora.util import devices

    model = tiny_gemma(TOKENIZER, softcap=softcap)
    prompts = [render(q) for q in QUESTIONS]  # three share a passage
    assert min(len(TOKENIZER(p)["input_ids"]) for p in prompts) > 10 * WINDOW
    monkeypatch.setattr(devices, "fast_cpu_bf16", lambda: True)  # screen whatever this CPU is
    calls = []
    forward = screened_head.ScreenedHead.forward
    monkeypatch.setattr(screened_head.ScreenedHead, "forward", lambda self, h: calls.append(1) or forward(self, h))
    batched = generate_answers(model, TOKENIZER, prompts, None, DecodingConfig(max_new_tokens=8, batch_size=4))
    assert calls, "the screened head was never used"
    alone = [
        generate_answers(
            model,
            TOKENIZER,
            [p],
            None,
            DecodingConfig(max_new_tokens=8, batch_size=1, share_prefix=False, screen_head=False),
        )[0]
        for p in prompts
    ]
    assert batched == alone and len(set(alone)) > 1


# ---------------------------------------------------------------- 5. LoRA on a Gemma-3-shaped model directory


@needs_data()
def test_lora_run_on_a_gemma_model_directory(tmp_path):
    """`jsquad-lora run` with a local Gemma-3-shaped model: shared-prefix rows with the sliding-window
    mask, the answer-only loss, LoRA on every linear layer, extractive evaluation before and after."""
    from jsquad_lora.cli import main
    from jsquad_lora.data.jglue import resolve_split
    from jsquad_lora.data.jsquad import load_split

    train = load_split(resolve_split(None, "test")).questions[:48]
    valid = load_split(resolve_split(None, "valid")).questions[:12]
    texts = [q.context + q.question + "".join(q.answers) for q in train + valid]
    tokenizer = build_char_tokenizer(texts + [SEED_INSTRUCTION, SIDE_CHECK_PROMPT, render(train[0])])
    model_dir = tmp_path / "gemma-tiny"
    model = tiny_gemma(tokenizer)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    out = tmp_path / "run"
    overrides = [
        f"model.name={model_dir}",
        "lora.enabled=true",
        "lora.target_modules=[all-linear]",
        "train.synthetic_per_passage=0",
        "train.prompt_loss_weight=0",
        "data.train_limit=48",
        "data.eval_limit=12",
        "train.epochs=1",
        "train.batch_size=4",
        "eval.batch_size=8",
        "eval.max_new_tokens=8",
        "model.max_length=640",
        "train.save_steps=4",
    ]
    assert main(["run", "--config", "tiny-cpu", "--output", str(out), *overrides]) == 0

    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "report.md").is_file()
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(
        adapter["target_modules"]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and {"before", "after"} <= set(metrics)
    assert metrics["after"]["jglue"]["count"] == 12
    assert metrics["train"]["examples"] == 48 and metrics["train"]["rows"] < 48  # a passage's questions shared rows
    assert metrics["train"]["steps"] >= 1

    # the same config trains the same adapter: LoRA's initial weights come from train.seed (a pretrained base
    # has no seeded construction of its own), and the Trainer seeds the rest
    from safetensors.torch import load_file

    again = tmp_path / "again"
    assert main(["train", "--config", "tiny-cpu", "--output", str(again), *overrides]) == 0
    first, second = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (out, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
