"""`jsquad-lora export --format gguf` on a tiny Gemma-3-shaped LoRA run: the one .gguf file loads with
transformers (`gguf_file=`, and `model.gguf_file=`) and gives the run's greedy answers in float32; f16 and
q8_0 write and load; llama.cpp (where llama-cpp-python is installed) tokenises and continues as the run's
model; the Ollama Modelfile's TEMPLATE renders the run's prompt exactly (a small renderer below stands in
for Ollama's Go text/template); an architecture it cannot write is refused before anything is written.

The run's base arrives as the default Gemma 3 does: a GGUF file (a tiny random Gemma 3 written below, with
a sentencepiece vocabulary of the questions' characters and some merged pieces) converted to a model
directory by transformers' GGUF reader, chat template included (`prompt.template=chat`).
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import needs_data

from jsquad_lora.config.load import load_config
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.errors import InputError
from jsquad_lora.evaluate.loop import build_prompts
from jsquad_lora.generate.decoding import decoding_config
from jsquad_lora.generate.greedy import generate_answers
from jsquad_lora.prompts.fewshot import make_renderer
from jsquad_lora.prompts.templates import SEED_INSTRUCTION, SIDE_CHECK_PROMPT
from jsquad_lora.tuned.export import CONFIG_NAME, EXPORT_MARKER, export_run

pytestmark = needs_data()
QUESTIONS = 12  # the run's data.eval_limit
TRAIN = 48
CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
USER_DEFINED = ["\n", "  "]  # as Gemma's GGUF stores them: matched whole, spaces as spaces


# ---------------------------------------------------------------- the run


def _vocabulary(texts: list[str]) -> list[str]:
    """Gemma-like tokens: control tokens, user-defined ones, 256 bytes, `▁`, the texts' characters, then the
    40 commonest character pairs and 10 triples built on them (merged pieces, listed in merge order)."""
    text = "".join(texts).replace(" ", "\u2581")
    chars = sorted(set(text) - set("\n") | {"\u2581"})
    pairs = [p for p, _ in Counter(text[i : i + 2] for i in range(len(text) - 1)).most_common(60) if "\n" not in p]
    pairs = pairs[:40]
    triples = [t for t, _ in Counter(text[i : i + 3] for i in range(len(text) - 2)).most_common(200)]
    triples = [t for t in triples if t[:2] in pairs and "\n" not in t][:10]
    return CONTROL + USER_DEFINED + [f"<0x{b:02X}>" for b in range(256)] + chars + pairs + triples


def write_tiny_gemma_gguf(path: Path, tokens: list[str]) -> None:
    """A random float32 Gemma 3 as llama.cpp lays it out (its tensor names, RMS-norm weights as 1 + w, no
    output.weight: tied), with a sentencepiece vocabulary. Heads of 256 dims: llama.cpp scales attention by
    the head size, transformers' GGUF reader by Gemma's query_pre_attn_scalar default, 256."""
    import gguf
    import numpy as np
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=32,  # shorter than the prompts: the sliding layers' window matters
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # random norm weights and a wider spread, so the answers vary and a wrong 1 + w shows
        for name, p in model.named_parameters():
            p.normal_(0, 0.1 if "norm" in name else 0.3)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny gemma 3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(config.sliding_window)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(
        [-1000.0] * len(CONTROL + USER_DEFINED) + [0.0] * (len(tokens) - len(CONTROL + USER_DEFINED))
    )
    types = [gguf.TokenType.CONTROL] * len(CONTROL) + [gguf.TokenType.USER_DEFINED] * len(USER_DEFINED)
    writer.add_token_types(
        types + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (len(tokens) - len(types) - 256)
    )
    for kind, token in (("pad", "<pad>"), ("eos", "<eos>"), ("bos", "<bos>"), ("unk", "<unk>")):
        getattr(writer, f"add_{kind}_token_id")(tokens.index(token))
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        stem, suffix = name.rsplit(".", 1)
        array = tensor.numpy().astype(np.float32)
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", array + 1 if "norm" in name else array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from jsquad_lora.cli import main

    root = tmp_path_factory.mktemp("gguf-export")
    train = load_split(resolve_split(None, "test")).questions[:TRAIN]
    valid = load_split(resolve_split(None, "valid")).questions[:QUESTIONS]
    texts = [q.context + q.question + "".join(q.answers) for q in train + valid]
    source = root / "source"
    source.mkdir()
    # "gemma-3…": the GGUF source gives it Gemma's chat template, as it does the built-in model
    write_tiny_gemma_gguf(source / "gemma-3-tiny.gguf", _vocabulary(texts + [SEED_INSTRUCTION, SIDE_CHECK_PROMPT]))
    out = root / "tiny-gemma-lora"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JSQUAD_LORA_CACHE", str(root / "cache"))
        overrides = [
            f"model.name={source}",
            "model.gguf_file=gemma-3-tiny.gguf",
            "model.max_length=640",
            "lora.enabled=true",
            "lora.target_modules=[all-linear]",
            "train.learning_rate=2e-2",  # the adapter changes the answers: comparing them shows it was merged
            "train.synthetic_per_passage=0",
            "train.prompt_loss_weight=0",
            "train.epochs=1",
            "train.batch_size=4",
            f"data.train_limit={TRAIN}",
            f"data.eval_limit={QUESTIONS}",
            "prompt.template=chat",
            "eval.decoding=greedy",
            "eval.dtype=float32",
            "eval.batch_size=12",
            "eval.max_new_tokens=8",
        ]
        assert main(["run", "--config", "tiny-cpu", "--output", str(out), *overrides]) == 0
        yield out


def run_answers(run_dir, stage: str = "after") -> list[str]:
    rows = [json.loads(line) for line in (run_dir / f"predictions-{stage}.jsonl").read_text().splitlines()]
    return [row["prediction"] for row in rows]


def run_prompts(run_dir, tokenizer) -> tuple[list[str], list[str]]:
    """The dev questions' prompts and passages as the run's evaluation built them, with `tokenizer`."""
    cfg = load_config(run_dir / "config.yaml")
    questions = load_split(resolve_split(None, "valid")).questions[:QUESTIONS]
    budget = cfg.model.max_length - cfg.eval.max_new_tokens
    prompts, passages, _ = build_prompts(questions, make_renderer(cfg, tokenizer, ()), tokenizer, budget)
    return prompts, passages


def answers_of(model, tokenizer, run_dir) -> list[str]:
    """The dev questions answered as the run's evaluation answered them (its prompts and decoding, float32)."""
    prompts, passages = run_prompts(run_dir, tokenizer)
    return generate_answers(
        model.eval(), tokenizer, prompts, passages, decoding_config(load_config(run_dir / "config.yaml"))
    )


def load_gguf(directory: Path, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(directory, gguf_file=name)


def run_model(run_dir):
    from jsquad_lora.tuned.loaded import load_run_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JSQUAD_LORA_CACHE", str(run_dir.parent / "cache"))
        return load_run_model(run_dir)


@pytest.fixture(scope="module")
def f32_export(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf-f32") / "export"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JSQUAD_LORA_CACHE", str(run_dir.parent / "cache"))
        export_run(run_dir, out, format="gguf", quantize="f32")
    return out


# ---------------------------------------------------------------- 1. float32: the run's answers


def test_f32_gguf_loads_with_transformers_and_answers_as_the_run(run_dir, f32_export):
    import gguf

    out = f32_export
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["tiny-gemma-lora-f32.gguf", "Modelfile", "README.md", CONFIG_NAME, EXPORT_MARKER]
    )  # one GGUF file: no safetensors, no tokenizer files
    assert not list(out.parent.glob(".*.tmp"))
    model, tokenizer = load_gguf(out, "tiny-gemma-lora-f32.gguf")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    after = run_answers(run_dir)
    assert after != run_answers(run_dir, "before") and len(set(after)) > 1  # the adapter changed varied answers
    assert answers_of(model, tokenizer, run_dir) == after

    # the tokenizer: the run's token ids for every prompt, its chat template, BOS added as the run added it
    loaded = run_model(run_dir)
    prompts, _ = run_prompts(run_dir, loaded.tokenizer)
    for prompt in prompts:
        assert (
            tokenizer(prompt, add_special_tokens=False)["input_ids"]
            == loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        )
    assert tokenizer.chat_template == loaded.tokenizer.chat_template and "<start_of_turn>" in tokenizer.chat_template

    # as llama.cpp's converter writes Gemma 3: its names and keys, norms as 1 + w, no output.weight (tied)
    reader = gguf.GGUFReader(str(out / "tiny-gemma-lora-f32.gguf"))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "gemma3" and field("general.file_type") == gguf.LlamaFileType.ALL_F32
    assert field("gemma3.block_count") == 2 and field("gemma3.attention.key_length") == 256
    assert field("gemma3.attention.sliding_window") == 32 and field("tokenizer.ggml.model") == "llama"
    assert field("tokenizer.ggml.add_bos_token") is True and field("tokenizer.ggml.add_space_prefix") is False
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors and tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    merged = loaded.model.model
    norm = torch.from_numpy(tensors["blk.1.attn_q_norm.weight"].data.copy())
    torch.testing.assert_close(norm, merged.layers[1].self_attn.q_norm.weight + 1, rtol=0, atol=0)
    q_proj = torch.from_numpy(tensors["blk.0.attn_q.weight"].data.copy())
    torch.testing.assert_close(q_proj, merged.layers[0].self_attn.q_proj.weight, rtol=0, atol=0)  # LoRA merged in
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert tokens[: len(CONTROL)] == CONTROL and set(types[: len(CONTROL)]) == {gguf.TokenType.CONTROL}
    newline = len(CONTROL)  # added to the HF tokenizer (matched whole), so USER_DEFINED again
    assert tokens[newline] == "\n" and types[newline] == gguf.TokenType.USER_DEFINED
    assert types[newline + 2 : newline + 2 + 256] == [gguf.TokenType.BYTE] * 256
    # merged pieces (the 50 and "  ", which transformers' reader makes a plain "▁▁" made by a merge) score by
    # merge rank, as llama.cpp's sentencepiece tokenizer merges: the earlier the merge, the higher the score
    scores = field("tokenizer.ggml.scores")
    pieces = [i for i, t in enumerate(tokens) if types[i] == gguf.TokenType.NORMAL and len(t) > 1]
    assert [tokens[i] for i in pieces[:1]] == ["\u2581\u2581"] and len(pieces) == 51
    assert all(scores[a] > scores[b] for a, b in zip(pieces, pieces[1:]))

    card = (out / "README.md").read_text()
    assert "llama-completion -m tiny-gemma-lora-f32.gguf" in card and "ollama create" in card
    assert "Ollama was not run here" in card and 'gguf_file="tiny-gemma-lora-f32.gguf"' in card
    assert "library_name: gguf" in card


def test_model_gguf_file_reads_the_export_back(run_dir, f32_export, tmp_path, monkeypatch):
    """`model.gguf_file=` (the source the built-in Gemma goes through) converts the export into a model
    directory with its chat template, which answers as the run did."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jsquad_lora.config.schema import ModelConfig
    from jsquad_lora.model.source import resolve_model_source

    monkeypatch.setenv("JSQUAD_LORA_CACHE", str(tmp_path / "cache"))
    directory = resolve_model_source(ModelConfig(gguf_file=str(f32_export / "tiny-gemma-lora-f32.gguf")))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert "<start_of_turn>" in tokenizer.chat_template
    assert answers_of(AutoModelForCausalLM.from_pretrained(directory), tokenizer, run_dir) == run_answers(run_dir)


# ---------------------------------------------------------------- 2. f16 and q8_0


@pytest.mark.parametrize("quantize", ["f16", "q8_0"])
def test_f16_and_q8_0_write_and_load(run_dir, f32_export, tmp_path, quantize):
    import gguf

    out = tmp_path / quantize
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JSQUAD_LORA_CACHE", str(run_dir.parent / "cache"))
        export_run(run_dir, out, format="gguf", quantize=quantize)
    name = f"tiny-gemma-lora-{quantize}.gguf"
    reader = gguf.GGUFReader(str(out / name))
    tensors = {t.name: t.tensor_type for t in reader.tensors}
    matrix = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quantize]
    assert tensors["token_embd.weight"] == tensors["blk.0.ffn_down.weight"] == matrix
    assert tensors["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay float32
    f32_size = (f32_export / "tiny-gemma-lora-f32.gguf").stat().st_size
    size = (out / name).stat().st_size
    assert size < (0.6 if quantize == "f16" else 0.35) * f32_size, (size, f32_size)

    model, tokenizer = load_gguf(out, name)
    reference, _ = load_gguf(f32_export, "tiny-gemma-lora-f32.gguf")
    prompts, _ = run_prompts(run_dir, tokenizer)
    ids = torch.tensor([tokenizer(prompts[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    error = (got - want).abs().max() / want.abs().max()
    assert 0 < error < (0.01 if quantize == "f16" else 0.05), error  # rounded, not broken
    answers = answers_of(model, tokenizer, run_dir)
    assert len(answers) == QUESTIONS and sum(a == b for a, b in zip(answers, run_answers(run_dir))) >= QUESTIONS // 2


def test_an_earlier_gguf_export_is_replaced_only_with_overwrite(run_dir, f32_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(f32_export, out)
    with pytest.raises(InputError, match="--overwrite"):
        export_run(run_dir, out, format="gguf", quantize="q8_0")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JSQUAD_LORA_CACHE", str(run_dir.parent / "cache"))
        export_run(run_dir, out, format="gguf", quantize="q8_0", overwrite=True)
    assert sorted(p.name for p in out.glob("*.gguf")) == ["tiny-gemma-lora-q8_0.gguf"]
    with pytest.raises(InputError, match="only a GGUF export"):
        export_run(run_dir, tmp_path / "other", quantize="q8_0")


# ---------------------------------------------------------------- 3. the Ollama Modelfile

ACTION = re.compile(r"{{(-[ \t\r\n])?\s*(.*?)\s*([ \t\r\n]-)?}}", re.S)


def render_go_template(template: str, data: dict[str, str]) -> str:
    """The subset of Go's text/template the Modelfile uses: {{ .Name }}, {{ if .Name }}…{{ else }}…{{ end }}
    (an empty string is false) and the trim markers {{- and -}} (all whitespace beside them goes)."""
    pieces: list[list] = []
    position = 0
    for m in ACTION.finditer(template):
        pieces += [["text", template[position : m.start()]], ["action", m[2], bool(m[1]), bool(m[3])]]
        position = m.end()
    pieces.append(["text", template[position:]])
    for i, piece in enumerate(pieces):
        if piece[0] == "action":
            if piece[2]:
                pieces[i - 1][1] = pieces[i - 1][1].rstrip(" \t\r\n")
            if piece[3]:
                pieces[i + 1][1] = pieces[i + 1][1].lstrip(" \t\r\n")
    out, branches = [], []
    for kind, value, *_ in pieces:
        if kind == "text":
            out += [value] if all(branches) else []
        elif m := re.fullmatch(r"if \.(\w+)", value):
            branches.append(bool(data[m[1]]))
        elif value == "else":
            branches[-1] = not branches[-1]
        elif value == "end":
            branches.pop()
        elif m := re.fullmatch(r"\.(\w+)", value):
            out += [data[m[1]]] if all(branches) else []
        else:
            raise ValueError(f"not in the renderer's subset: {{{{ {value} }}}}")
    assert not branches, "an {{ if }} without {{ end }}"
    return "".join(out)


def test_the_go_template_renderer():
    template = "a{{ if .System }}[{{ .System }}]\n{{ else }}-{{ end }}  {{- .Prompt -}}  \n b"
    assert render_go_template(template, {"System": "S", "Prompt": "P"}) == "a[S]\nPb"
    assert render_go_template(template, {"System": "", "Prompt": "P"}) == "a-Pb"


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(instruction, value) pairs as Ollama's parser reads them: a value is bare to the end of its line,
    in "…", or in \"\"\"…\"\"\" (newlines kept, nothing unescaped); PARAMETER's value is "name value"."""
    commands, i = [], 0
    while i < len(text):
        line_end = text.find("\n", i) if "\n" in text[i:] else len(text)
        line = text[i:line_end]
        if not line.strip() or line.startswith("#"):
            i = line_end + 1
            continue
        m = re.match(r"(FROM|TEMPLATE|SYSTEM|PARAMETER) (\w+ )?", line)
        assert m, line
        start = i + m.end()
        quote = '"""' if text.startswith('"""', start) else '"' if text.startswith('"', start) else None
        if quote:
            end = text.index(quote, start + len(quote))
            value, i = text[start + len(quote) : end], end + len(quote) + 1
        else:
            value, i = text[start:line_end], line_end + 1
        commands.append((m[1], (m[2] or "") + value))
    return commands


def test_the_modelfile_renders_the_run_prompt(run_dir, f32_export):
    text = (f32_export / "Modelfile").read_text()
    commands = parse_modelfile(text)
    single = {k: v for k, v in commands if k != "PARAMETER"}
    parameters = [v.split(" ", 1) for k, v in commands if k == "PARAMETER"]
    assert single["FROM"] == "./tiny-gemma-lora-f32.gguf" and (f32_export / single["FROM"]).is_file()
    assert single["SYSTEM"] == SEED_INSTRUCTION
    cfg = load_config(run_dir / "config.yaml")
    assert ["num_predict", str(cfg.eval.max_new_tokens)] in parameters and ["temperature", "0"] in parameters
    assert ["repeat_penalty", "1"] in parameters
    stops = [v for k, v in parameters if k == "stop"]
    assert {"\n", "<NL>", "<eos>", "<end_of_turn>"} <= set(stops)

    loaded = run_model(run_dir)
    bos = loaded.tokenizer.bos_token
    for q in load_split(resolve_split(None, "valid")).questions[:QUESTIONS]:
        prompt, passage = loaded.prompt(q.context, q.question)  # as the run rendered it for evaluation
        message = f"文章:{passage}\n質問:{q.question}"
        assert bos + render_go_template(single["TEMPLATE"], {"System": single["SYSTEM"], "Prompt": message}) == prompt
    # without a system message the turn holds the message alone
    alone = render_go_template(single["TEMPLATE"], {"System": "", "Prompt": "M"})
    assert alone == "<start_of_turn>user\nM<end_of_turn>\n<start_of_turn>model\n"


# ---------------------------------------------------------------- 4. what cannot be written is refused first


def test_another_architecture_without_a_converter_is_refused_before_anything_is_written(run_dir, tmp_path, monkeypatch):
    """A run on a GPT-NeoX model, which llama.cpp's converter writes (tests/test_export_llama_cpp.py), with no
    converter given: refused from its config, before its model is loaded or a file written."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from jsquad_lora.tuned import export

    neox = tmp_path / "neox"
    GPTNeoXForCausalLM(
        GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(neox)
    copy = tmp_path / "neox-run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"].update(name=str(neox), gguf_file=None)
    (copy / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))

    def no_loading(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(export, "load_model", no_loading)
    monkeypatch.delenv("JSQUAD_LORA_LLAMA_CPP", raising=False)
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        export_run(copy, out, format="gguf")
    assert "gpt_neox" in str(err.value) and "--llama-cpp" in str(err.value) and "Gemma 3" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_gemma_3_layout_llama_cpp_reads_otherwise_is_refused():
    from transformers import Gemma3TextConfig

    from jsquad_lora.tuned.gguf_export import check_architecture

    fine = dict(num_hidden_layers=2, head_dim=256, query_pre_attn_scalar=256)
    check_architecture(Gemma3TextConfig(**fine))
    with pytest.raises(InputError, match="every 6th layer"):
        check_architecture(Gemma3TextConfig(**fine, layer_types=["full_attention", "sliding_attention"]))
    with pytest.raises(InputError, match="query_pre_attn_scalar"):
        check_architecture(Gemma3TextConfig(**fine | {"head_dim": 8}))


# ---------------------------------------------------------------- 5. llama.cpp itself, where installed


def test_llama_cpp_reads_the_export_as_the_run_model(run_dir, f32_export):
    """llama.cpp (through llama-cpp-python) tokenises every prompt into the run's ids, computes the run
    model's next-token logits and continues greedily with the run model's tokens."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from jsquad_lora.encoding.tokens import prompt_ids

    llm = llama_cpp.Llama(
        model_path=str(f32_export / "tiny-gemma-lora-f32.gguf"),
        n_ctx=640,
        logits_all=True,
        type_k=0,  # a float32 KV cache (GGML_TYPE_F32): its default, float16, rounds the keys and values
        type_v=0,
        verbose=False,
    )
    loaded = run_model(run_dir)
    prompts, _ = run_prompts(run_dir, loaded.tokenizer)
    for prompt in prompts:
        ids = prompt_ids(loaded.tokenizer, prompt)
        text = prompt.removeprefix(loaded.tokenizer.bos_token)  # llama.cpp adds the BOS (add_bos_token)
        assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) == ids
        with torch.no_grad():
            want = loaded.model.generate(
                torch.tensor([ids]), max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
        llm.reset()
        llm.eval(ids)
        got, logits = torch.tensor(llm.scores[llm.n_tokens - 1]), want.logits[0][0]
        # llama.cpp's CPU kernels compute in another order, some with approximations: 2e-4 of the largest logit
        assert (got - logits).abs().max() < 1e-3 * logits.abs().max()
        greedy = []
        for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):
            greedy.append(token)
            if len(greedy) == len(want.sequences[0]) - len(ids):
                break
        assert greedy == want.sequences[0, len(ids) :].tolist()
