"""`jsquad-lora export --format gguf` through llama.cpp's own converter, on LoRA runs of the Qwen2 and rinna
(GPT-NeoX, sentencepiece) stand-ins: the converter is llama-cpp-python's source archive as PyPI serves it
(downloaded once into the test cache; the tests skip where PyPI cannot be reached, or use
$JSQUAD_LORA_LLAMA_CPP). The Qwen2 file loads with transformers and computes the run's merged model; the
rinna file holds the sentencepiece vocabulary and the merged weights; llama.cpp itself (where llama-cpp-python
is installed) tokenises every prompt into the run's ids and computes the run's logits from both. A model
llama.cpp has no tokenizer for, and a family with no converter given, are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, needs_data
from standins import qwen_standin, rinna_standin

from jsquad_lora.cli import main
from jsquad_lora.encoding.tokens import prompt_ids
from jsquad_lora.errors import InputError
from jsquad_lora.tuned.export import export_run

pytestmark = needs_data()
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
#: the llama-cpp-python release whose vendored converter these tests run
LLAMA_CPP_PYTHON = "0.3.36"
RUN = [
    f"data.dir={SHARED}",
    "data.train_split=test",
    "data.eval_split=valid",
    "data.train_limit=16",
    "data.eval_limit=6",
    "train.batch_size=4",
    "train.learning_rate=2e-2",  # the adapter changes the model: the file must hold the merged weights
    "eval.before=false",
    "eval.side_check=false",
    "eval.batch_size=6",
    "eval.max_new_tokens=6",
    "eval.decoding=greedy",
    "eval.dtype=float32",
]
CONFIGS = {"qwen": ("qwen2.5-3b-chat", []), "rinna": ("rinna-3.6b-seed", ["model.load_in_8bit=false"])}


@pytest.fixture(scope="module")
def converter(tmp_path_factory) -> Path:
    """llama-cpp-python's source archive from PyPI (cached), or $JSQUAD_LORA_LLAMA_CPP."""
    if given := os.environ.get("JSQUAD_LORA_LLAMA_CPP"):
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jsquad-lora-tests"
    archive = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not archive.is_file():
        try:
            index = "https://pypi.org/pypi/llama-cpp-python/json"
            with urllib.request.urlopen(index, timeout=60) as r:
                files = json.load(r)["releases"][LLAMA_CPP_PYTHON]
            sdist = next(u for u in files if u["packagetype"] == "sdist")
            cache.mkdir(parents=True, exist_ok=True)
            partial = archive.with_suffix(".part")
            urllib.request.urlretrieve(urllib.parse.urljoin(index, sdist["url"]), partial)  # a mirror's may be relative
            if hashlib.sha256(partial.read_bytes()).hexdigest() != sdist["digests"]["sha256"]:
                raise OSError(f"{partial}: not the sha256 PyPI lists")
            partial.replace(archive)
        except OSError as err:
            pytest.skip(f"llama-cpp-python's source archive could not be downloaded from PyPI: {err}")
    return archive


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama-cpp-runs")
    models = {"qwen": qwen_standin(root / "qwen-model"), "rinna": rinna_standin(root / "rinna-model")}
    out = {}
    for family, (config, extra) in CONFIGS.items():
        out[family] = root / family
        args = ["run", "--config", config, "--output", str(out[family]), f"model.name={models[family]}"]
        assert main([*args, *RUN, *extra]) == 0, family
    return out


@pytest.fixture(scope="module")
def exports(runs, converter, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama-cpp-exports")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JSQUAD_LORA_CACHE", str(root / "cache"))
        return {
            family: export_run(run, root / family, format="gguf", quantize="f32", llama_cpp=converter)
            for family, run in runs.items()
        }


def merged(run_dir: Path):
    """The run's model, merged as the export merges it, computing in float32 (the file is f32; a run in
    bfloat16 gives the same weights)."""
    from jsquad_lora.tuned.loaded import load_run_model

    loaded = load_run_model(run_dir)
    loaded.model.float().eval()
    return loaded


def run_prompts(run_dir: Path, tokenizer) -> list[list[int]]:
    """The run's dev prompts as token ids, as its evaluation encoded them."""
    from jsquad_lora.config.load import load_config
    from jsquad_lora.data.jglue import resolve_split
    from jsquad_lora.data.jsquad import load_split
    from jsquad_lora.evaluate.loop import build_prompts
    from jsquad_lora.prompts.fewshot import make_renderer

    cfg = load_config(run_dir / "config.yaml")
    questions = load_split(resolve_split(str(SHARED), "valid")).questions[:6]
    budget = cfg.model.max_length - cfg.eval.max_new_tokens
    prompts, _, _ = build_prompts(questions, make_renderer(cfg, tokenizer, ()), tokenizer, budget)
    return [prompt_ids(tokenizer, prompt) for prompt in prompts]


def gguf_file(export: Path) -> Path:
    (path,) = export.glob("*.gguf")
    return path


def fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, reader


def test_the_qwen_file_loads_with_transformers_and_computes_the_merged_model(runs, exports):
    from transformers import AutoModelForCausalLM

    path = gguf_file(exports["qwen"])
    meta, _ = fields(path)
    assert meta["general.architecture"] == "qwen2" and meta["tokenizer.ggml.model"] == "gpt2"
    # the stand-in's BPE is not one the converter knows by its hash; transformers gives a Qwen2 tokenizer
    # Qwen2's pre-tokenizer regex, which names it
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    loaded = merged(runs["qwen"])
    model = AutoModelForCausalLM.from_pretrained(exports["qwen"], gguf_file=path.name, dtype=torch.float32).eval()
    for ids in run_prompts(runs["qwen"], loaded.tokenizer):
        with torch.no_grad():
            want = loaded.model(torch.tensor([ids])).logits[0, -1]
            got = model(torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert (exports["qwen"] / "Modelfile").read_text().count("<|im_start|>") >= 1
    assert not list(exports["qwen"].glob(".merged*")), "the staged model directory is removed"
    assert f'gguf_file="{path.name}"' in (exports["qwen"] / "README.md").read_text()


def test_the_rinna_file_holds_the_sentencepiece_vocabulary_and_the_merged_weights(runs, exports):
    import sentencepiece as spm

    path = gguf_file(exports["rinna"])
    meta, reader = fields(path)
    # a unigram sentencepiece model: llama.cpp's Viterbi ("t5") tokenizer, with the model's normaliser
    assert meta["general.architecture"] == "gptneox" and meta["tokenizer.ggml.model"] == "t5"
    assert meta["tokenizer.ggml.add_space_prefix"] is False and meta["tokenizer.ggml.precompiled_charsmap"]
    card = (exports["rinna"] / "README.md").read_text()
    assert "transformers does not read gpt_neox GGUF files" in card and "gguf_file=" not in card
    pieces = spm.SentencePieceProcessor(model_file=str(runs["rinna"] / "adapter" / "spiece.model"))
    assert meta["tokenizer.ggml.tokens"][: pieces.vocab_size()] == [
        pieces.id_to_piece(i) for i in range(pieces.vocab_size())
    ]
    loaded = merged(runs["rinna"])
    assert meta["tokenizer.ggml.add_bos_token"] is False  # rinna's prompts start without <s>
    assert meta["gptneox.rope.freq_base"] == pytest.approx(loaded.model.config.rope_parameters["rope_theta"])
    tensors = {t.name: t for t in reader.tensors}
    state = loaded.model.state_dict()
    embedding = np.asarray(tensors["token_embd.weight"].data)
    assert np.allclose(embedding, state["gpt_neox.embed_in.weight"].float().numpy())
    # the LoRA-trained matrix (query_key_value), in llama.cpp's order (the converter regroups rinna's
    # per-head q, k, v rows into all q, then all k, then all v): the merged weights, not the base's
    qkv = np.asarray(tensors["blk.0.attn_qkv.weight"].data)
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    heads = loaded.model.config.num_attention_heads
    assert np.allclose(qkv, regrouped(state[name].float().numpy(), heads), atol=1e-6)
    assert not np.allclose(qkv, regrouped(rinna_base_weight(runs["rinna"], name), heads), atol=1e-4)


def regrouped(qkv: np.ndarray, heads: int) -> np.ndarray:
    width = qkv.shape[1]
    per_head = qkv.reshape(heads, 3, width // heads, width)
    return np.concatenate([per_head[:, i].reshape(-1, width) for i in range(3)])


def rinna_base_weight(run_dir: Path, name: str) -> np.ndarray:
    from safetensors.torch import load_file

    from jsquad_lora.config.load import load_config

    base = Path(load_config(run_dir / "config.yaml").model.name)
    return load_file(base / "model.safetensors")[name].float().numpy()


@pytest.mark.parametrize("family", list(CONFIGS))
def test_llama_cpp_reads_the_file_as_the_run_model(runs, exports, family):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = gguf_file(exports[family])
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, logits_all=True, type_k=0, type_v=0, verbose=False)
    loaded = merged(runs[family])
    tokenizer = loaded.tokenizer
    for ids in run_prompts(runs[family], tokenizer):
        # sentencepiece spells a character outside the vocabulary as byte pieces (<0xE6>), llama.cpp's Viterbi
        # tokenizer as <unk> (below): the text compared is the prompt without such characters
        in_vocabulary = [i for i in ids if not BYTE_PIECE.fullmatch(tokenizer.convert_ids_to_tokens(i))]
        text = tokenizer.decode(in_vocabulary)
        # add_bos=True is llama_tokenize's add_special: a BOS only where the file's add_bos_token says so
        assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) == prompt_ids(tokenizer, text)
        with torch.no_grad():
            want = loaded.model(torch.tensor([ids])).logits[0, -1]
        llm.reset()
        llm.eval(ids)
        got = torch.tensor(llm.scores[llm.n_tokens - 1])
        assert (got - want).abs().max() < 1e-3 * want.abs().max()


def test_llama_cpp_spells_a_character_outside_rinnas_vocabulary_as_unk(runs, exports):
    """A known limit, said in BENCHMARKS.md: llama.cpp's unigram tokenizer has no byte fallback."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(gguf_file(exports["rinna"])), vocab_only=True, verbose=False)
    tokenizer = merged(runs["rinna"]).tokenizer
    outside = next(
        c for c in "抽鬱龘" if BYTE_PIECE.fullmatch(tokenizer.convert_ids_to_tokens(prompt_ids(tokenizer, c))[0])
    )
    assert llm.tokenize(outside.encode("utf-8"), add_bos=True, special=True) == [tokenizer.unk_token_id]


def test_a_tokenizer_llama_cpp_has_no_counterpart_for_is_refused_before_anything_is_written(converter, tmp_path):
    from conftest import TINY_TEST

    run = tmp_path / "tiny"
    assert main(["run", "--output", str(run), *TINY_TEST, "eval.before=false", "eval.side_check=false"]) == 0
    out = tmp_path / "export"
    with pytest.raises(InputError, match="no llama.cpp counterpart") as refused:
        export_run(run, out, format="gguf", llama_cpp=converter)
    assert "safetensors" in str(refused.value)
    assert not out.exists()


def test_a_family_without_a_converter_is_refused_before_anything_is_written(runs, tmp_path, monkeypatch):
    monkeypatch.delenv("JSQUAD_LORA_LLAMA_CPP", raising=False)
    out = tmp_path / "export"
    assert main(["export", str(runs["qwen"]), "--output", str(out), "--format", "gguf"]) == 2
    assert not out.exists()
    with pytest.raises(InputError, match="--llama-cpp"):
        export_run(runs["qwen"], out, format="gguf")
    with pytest.raises(InputError, match="no convert_hf_to_gguf.py"):
        export_run(runs["qwen"], out, format="gguf", llama_cpp=tmp_path)
    assert not out.exists()


def test_the_converter_is_found_in_a_checkout_an_unpacked_source_or_its_archive(converter, tmp_path, monkeypatch):
    from jsquad_lora.tuned.llama_cpp_convert import SCRIPT, find_converter

    monkeypatch.setenv("JSQUAD_LORA_CACHE", str(tmp_path / "cache"))
    if converter.is_file():  # the archive: unpacked once into the cache, then found under vendor/llama.cpp
        found = find_converter(converter)
        assert found.is_relative_to(tmp_path / "cache") and found == find_converter(converter)
    else:
        found = find_converter(converter)
    assert (found / SCRIPT).is_file()
    assert find_converter(found) == found  # a llama.cpp checkout
    if found.parent.name == "vendor":
        assert find_converter(found.parent.parent) == found  # llama-cpp-python's source, unpacked
    monkeypatch.setenv("JSQUAD_LORA_LLAMA_CPP", str(found))
    assert find_converter(None) == found
