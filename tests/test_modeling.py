"""Model building and the LoRA attachment of the seed recipe on the real architecture (meta device)."""

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from jsquad_lora.config.schema import LoraSettings, ModelConfig
from jsquad_lora.model.lora import attach_lora, count_parameters
from jsquad_lora.model.sources.tiny import build_char_tokenizer, build_tiny_model
from jsquad_lora.prompts.templates import NL as NL_TOKEN


def rinna_shaped_on_meta():
    config = GPTNeoXConfig(
        vocab_size=32000,
        hidden_size=2816,
        num_hidden_layers=36,
        num_attention_heads=22,
        intermediate_size=11264,
        max_position_embeddings=2048,
    )
    with torch.device("meta"):
        return GPTNeoXForCausalLM(config)


def test_seed_lora_attaches_to_every_query_key_value():
    model = attach_lora(
        rinna_shaped_on_meta(), LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=["query_key_value"])
    )
    wrapped = [
        name
        for name, module in model.named_modules()
        if name.endswith("attention.query_key_value") and hasattr(module, "lora_A")
    ]
    assert len(wrapped) == 36
    trainable, _ = count_parameters(model)
    # per layer: A is 8 x 2816, B is (3·2816) x 8
    assert trainable == 36 * (2816 * 8 + 8 * 3 * 2816) == 3_244_032
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_all_linear_targets_every_linear_layer_but_the_head():
    model = attach_lora(rinna_shaped_on_meta(), LoraSettings(r=8, alpha=16, target_modules=["all-linear"]))
    wrapped = {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and not name.endswith("lora_A")
    }
    assert {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"} <= wrapped
    assert "embed_out" not in wrapped


def test_char_tokenizer_roundtrip_and_nl_token(tmp_path):
    tokenizer = build_char_tokenizer(["東京は 8,000m", NL_TOKEN])
    ids = tokenizer("東京<NL>8,000m")["input_ids"]
    assert len(ids) == 2 + 1 + 6  # <NL> is one token
    assert tokenizer.decode(ids) == "東京<NL>8,000m"
    assert tokenizer("未")["input_ids"] == [tokenizer.unk_token_id]
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path)("東京<NL>")["input_ids"] == ids[:3]
    model = build_tiny_model(ModelConfig(tiny_layers=1, tiny_hidden=32, tiny_heads=2, tiny_intermediate=64), tokenizer)
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path, capsys):
    """A model directory holding only pytorch_model.bin: exit 2 with the fix; loads with model.allow_pickle=true."""
    from pathlib import Path

    from jsquad_lora.cli import main
    from jsquad_lora.config.schema import ModelConfig
    from jsquad_lora.model.load import load_base_model
    from jsquad_lora.model.sources.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(["梅雨は東アジアの気象現象である。"])
    model = build_tiny_model(ModelConfig(tiny_layers=1, tiny_hidden=16, tiny_heads=2, tiny_intermediate=32), tokenizer)
    path = tmp_path / "pickled"
    path.mkdir()
    model.config.save_pretrained(path)  # transformers 5 writes only safetensors: write the pickle by hand
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    tokenizer.save_pretrained(path)
    assert (path / "pytorch_model.bin").exists() and not (path / "model.safetensors").exists()
    code = main(
        [
            "run",
            "--output",
            str(tmp_path / "run"),
            f"model.name={path}",
            "eval.before=false",
            f"data.dir={Path(__file__).parent / 'bad_inputs' / 'good.json'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "model.allow_pickle=true" in err and str(path) in err and "Traceback" not in err
    loaded = load_base_model(ModelConfig(name=str(path), allow_pickle=True))
    assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
