"""The real recipes, checked without their weights (issue 10 §2, §3, §5).

- the seed config: peft's `prepare_model_for_kbit_training` called as the write-up called it,
  JSQuAD v1.1 through `jglue:v1.1` (a fake download here: no network), a clear error offline;
- vLLM: what it serves per architecture (rinna's GPT-NeoX: merged weights), the merge itself,
  and the engine lifetime (one at a time, released after each evaluation), with a stand-in vllm
  module (vLLM needs CUDA);
- every family path end to end on CPU: a GPT-NeoX with a rinna-style sentencepiece tokenizer under
  `rinna-3.6b-seed` (no 8-bit on CPU), a Qwen2 with a chat template under `qwen2.5-3b-chat`:
  `run` (train, evaluate before/after, report) and `ask`; and generation through the peft-wrapped
  model batched == one at a time.
"""

from __future__ import annotations

import io
import json
import sys
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import SHARED, needs_data
from standins import qwen_standin, randomise_lora, rinna_standin

from jsquad_lora.cli import main
from jsquad_lora.config.load import load_config
from jsquad_lora.config.schema import LoraSettings
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.evaluate.vllm import MERGED_DIR, Serving, VllmEngines, answerer, serving
from jsquad_lora.generate.decoding import DecodingConfig
from jsquad_lora.generate.greedy import generate_answers
from jsquad_lora.model.load import load_base_model, load_tokenizer
from jsquad_lora.model.lora import attach_lora, save_merged
from jsquad_lora.model.sentencepiece_tokenizer import SentencePieceTokenizer

#: small data and short answers: a run in seconds (the configs' model, LoRA, prompt and decoding kept)
SMALL = [
    f"data.dir={SHARED}",
    "data.train_split=test",  # offline there is no train split
    "data.eval_split=valid",
    "data.train_limit=16",
    "data.eval_limit=8",
    "train.batch_size=4",
    "train.save_steps=2",
    "train.logging_steps=1",
    "eval.batch_size=4",
    "eval.max_new_tokens=8",
]
#: what CPUs cannot do: 8-bit weights (bitsandbytes needs CUDA); float16 training
ON_CPU = {"rinna-3.6b-seed": ["model.load_in_8bit=false", "model.dtype=float32"], "qwen2.5-3b-chat": []}
CONTEXT, QUESTION = "梅雨は東アジアの気象現象である。", "梅雨はどこの現象か。"


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- §2 the seed config


def test_seed_config_is_the_published_recipe():
    cfg = load_config("rinna-3.6b-seed")
    assert cfg.model.name == "rinna/japanese-gpt-neox-3.6b-instruction-ppo" and cfg.model.load_in_8bit
    assert cfg.model.gradient_checkpointing  # prepare_model_for_kbit_training's default
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules, cfg.lora.bias) == (
        8,
        16,
        0.05,
        ["query_key_value"],
        "none",
    )
    assert cfg.train.epochs == 2 and cfg.prompt.template == "seed" and cfg.prompt.fewshot == 0
    assert cfg.data.dir == "jglue:v1.1"  # the write-up's JSQuAD (62,859 train questions)
    for other in ("rinna-3.6b-best", "qwen2.5-3b-chat"):
        assert load_config(other).data.dir == "jglue:v1.3"


def test_kbit_preparation_is_called_with_peft_defaults(monkeypatch):
    """The write-up called `prepare_model_for_kbit_training(model)`: no argument beside the model."""
    import peft
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    calls = []
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", lambda *a, **k: calls.append((a, k)) or a[0])
    cfg = load_config("rinna-3.6b-seed")
    model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    attach_lora(model, cfg.lora, quantized=True, gradient_checkpointing=cfg.model.gradient_checkpointing)
    assert len(calls) == 1 and calls[0][0] == (model,) and calls[0][1] == {}
    attach_lora(model, cfg.lora, quantized=True, gradient_checkpointing=False)
    assert calls[1][1] == {"use_gradient_checkpointing": False}


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@needs_data()
def test_jglue_v1_1_downloads_and_resolves(monkeypatch, tmp_path):
    """`jglue:v1.1` fetches the v1.1 files (the release tag, else main) into the cache; `train` is its file."""
    monkeypatch.setenv("JSQUAD_LORA_CACHE", str(tmp_path / "cache"))
    article = json.loads((SHARED / "valid-v1.3.json").read_text())["data"][:1]
    payload = json.dumps({"version": "v1.1", "data": article}).encode()
    asked = []

    def fake_urlopen(url, timeout):
        asked.append(url)
        if "/v1.1.0/" in url:  # not at the tag: the next ref is tried
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return _Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = resolve_split("jglue:v1.1", "train")
    assert path == tmp_path / "cache" / "jglue" / "v1.1" / "train-v1.1.json"
    assert len(load_split(path).questions) == sum(len(p["qas"]) for p in article[0]["paragraphs"])
    assert resolve_split("jglue:v1.1", "valid").name == "valid-v1.1.json"
    assert [u.rsplit("/", 4)[1:] for u in asked] == [
        ["v1.1.0", "datasets", "jsquad-v1.1", "train-v1.1.json"],
        ["main", "datasets", "jsquad-v1.1", "train-v1.1.json"],
        ["v1.1.0", "datasets", "jsquad-v1.1", "valid-v1.1.json"],
        ["main", "datasets", "jsquad-v1.1", "valid-v1.1.json"],
    ]
    asked.clear()
    resolve_split("jglue:v1.1", "train")
    assert asked == []  # cached


def test_seed_config_offline_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("JSQUAD_LORA_CACHE", str(tmp_path / "cache"))

    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    out = tmp_path / "run"
    assert main(["run", "--config", "rinna-3.6b-seed", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "jglue:v1.1" in err and "could not download" in err and "data.dir" in err and "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------- §5 every family end to end


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {"rinna-3.6b-seed": rinna_standin(root / "rinna"), "qwen2.5-3b-chat": qwen_standin(root / "qwen")}


@pytest.fixture(scope="module")
def runs(standins, tmp_path_factory):
    """`jsquad-lora run` with each real config on its stand-in: {config: run directory}."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for config, model in standins.items():
        out[config] = root / config
        args = ["run", "--config", config, "--output", str(out[config]), f"model.name={model}"]
        assert main([*args, *ON_CPU[config], *SMALL]) == 0, config
    return out


@needs_data()
@pytest.mark.parametrize("config", list(ON_CPU))
def test_family_runs_end_to_end(runs, config, capsys):
    run_dir = runs[config]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["finished"] and metrics["recipe"] == config.replace(".yaml", "")
    for stage in ("before", "after"):
        assert metrics[stage]["jglue"]["count"] == 8
        assert len((run_dir / f"predictions-{stage}.jsonl").read_text().splitlines()) == 8
    for name in ("report.md", "report.html", "scores.png", "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    resolved = load_config(run_dir / "config.yaml")
    expected = load_config(config)
    assert resolved.lora == expected.lora and resolved.prompt == expected.prompt
    assert resolved.eval.decoding == expected.eval.decoding and resolved.train.batching == expected.train.batching
    assert metrics["train"]["trainable_parameters"] > 0
    # ask reloads the run (its base, adapter and tokenizer)
    assert main(["ask", "--run", str(run_dir), "--context", CONTEXT, "--question", QUESTION]) == 0
    answer = capsys.readouterr().out.strip()
    if expected.eval.decoding == "extractive":
        assert answer in CONTEXT


@needs_data()
def test_rinna_run_keeps_the_sentencepiece_tokenizer(runs):
    adapter = runs["rinna-3.6b-seed"] / "adapter"
    assert (adapter / "spiece.model").is_file() and not (adapter / "tokenizer.json").exists()
    assert isinstance(load_tokenizer(str(adapter)), SentencePieceTokenizer)


def _peft_model(config: str, model_dir: Path):
    cfg = load_config(config, [f"model.name={model_dir}", *ON_CPU[config]])
    tokenizer = load_tokenizer(str(model_dir))
    model = attach_lora(load_base_model(cfg.model), cfg.lora)
    randomise_lora(model)
    return cfg, model.eval(), tokenizer


@needs_data()
@pytest.mark.parametrize("config", list(ON_CPU))
def test_peft_wrapped_generation_batched_equals_one_at_a_time(standins, config):
    from jsquad_lora.prompts.fewshot import make_renderer

    cfg, model, tokenizer = _peft_model(config, standins[config])
    questions = load_split(SHARED / "valid-v1.3.json").questions[:40:6]
    render = make_renderer(cfg, tokenizer, ())
    prompts, passages = [render(q) for q in questions], [q.context for q in questions]
    for mode in ("greedy", cfg.eval.decoding):
        batched = generate_answers(model, tokenizer, prompts, passages, DecodingConfig(8, 3, mode))
        alone = [
            generate_answers(model, tokenizer, [p], [c], DecodingConfig(8, 1, mode))[0]
            for p, c in zip(prompts, passages)
        ]
        assert batched == alone, mode
        assert mode != "greedy" or len(set(alone)) > 1, "the random model should answer different prompts differently"
    assert hasattr(model, "peft_config")


# ---------------------------------------------------------------- §3 vLLM


def test_what_vllm_serves_per_architecture():
    lora = LoraSettings()
    for config in ("rinna-3.6b-seed", "rinna-3.6b-best"):  # vLLM's GPT-NeoX has no LoRA: merged weights
        settings = load_config(config).lora
        assert serving("GPTNeoXForCausalLM", settings, trained=True) == Serving("merged")
        assert serving("GPTNeoXForCausalLM", settings, trained=False) == Serving("base")
    chat = load_config("qwen2.5-3b-chat").lora
    assert serving("Qwen2ForCausalLM", chat, trained=True) == Serving("base", lora_request=True)
    assert serving("Qwen2ForCausalLM", LoraSettings(use_dora=True), trained=True) == Serving("merged")
    assert serving("Qwen2ForCausalLM", LoraSettings(bias="all"), trained=True) == Serving("merged")
    assert serving("SomeNewForCausalLM", lora, trained=True) == Serving("merged")
    assert serving("GPTNeoXForCausalLM", LoraSettings(enabled=False), trained=True) == Serving("weights")


@needs_data()
def test_merge_is_the_adapted_model(standins, tmp_path):
    """peft's merge, saved as safetensors: loaded back, the same logits as base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, model, tokenizer = _peft_model("rinna-3.6b-seed", standins["rinna-3.6b-seed"])
    model.save_pretrained(tmp_path / "adapter")
    target = save_merged(cfg.model, cfg.model.name, tmp_path / "adapter", tmp_path / "merged", tokenizer)
    assert (target / "model.safetensors").is_file() and not list(target.glob("*.bin"))
    merged = AutoModelForCausalLM.from_pretrained(target).eval()
    adapted = PeftModel.from_pretrained(load_base_model(cfg.model), tmp_path / "adapter").eval()
    ids = torch.tensor([tokenizer("梅雨は東アジアの気象現象である。")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, load_base_model(cfg.model)(ids).logits, atol=1e-3)
    assert isinstance(load_tokenizer(str(target)), SentencePieceTokenizer)


class FakeLLM:
    """vllm.LLM's surface as the backend uses it; records engines and what each served."""

    made: list = []
    alive: list = []
    peak = 0

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.requests = kwargs, []
        self.model_files = sorted(p.name for p in Path(kwargs["model"]).iterdir())
        FakeLLM.made.append(self)
        FakeLLM.alive.append(self)
        FakeLLM.peak = max(FakeLLM.peak, len(FakeLLM.alive))

    def generate(self, requests, params, lora_request=None, use_tqdm=False):
        self.requests.append((len(requests), lora_request))
        out = types.SimpleNamespace(token_ids=[params.stop_token_ids[0]])
        return [types.SimpleNamespace(outputs=[out]) for _ in requests]

    def shutdown(self) -> None:
        FakeLLM.alive.remove(self)


@pytest.fixture()
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, index, path: types.SimpleNamespace(name=name, path=path)
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    FakeLLM.made, FakeLLM.alive, FakeLLM.peak = [], [], 0
    return FakeLLM


@needs_data()
@pytest.mark.parametrize("config", list(ON_CPU))
def test_vllm_engines_before_and_after(runs, config, fake_vllm):
    """Before: the base. After: rinna's merged weights (a temporary directory, gone afterwards), Qwen's
    base with the adapter per request. Each engine starts when answers are asked and is released
    when they are in: never two at once, none alive between the evaluations (training) or after."""
    from jsquad_lora.model.lora import load_trained

    run_dir = runs[config]
    cfg = load_config(run_dir / "config.yaml", ["eval.backend=vllm", "eval.decoding=greedy"])
    base = load_base_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model.name)
    prompts = ["ユーザー: 質問<NL>システム: ", "ユーザー: 別の質問<NL>システム: "]
    decoding = DecodingConfig(8, 4, "greedy")
    with VllmEngines() as engines:
        before = answerer(cfg, run_dir, base, tokenizer, None, engines)
        assert fake_vllm.made == []  # nothing starts before answers are asked
        assert before(prompts, decoding, None) == ["", ""]
        assert fake_vllm.alive == []  # released before training would start
        trained = load_trained(load_base_model(cfg.model), run_dir / "adapter", True)
        after = answerer(cfg, run_dir, trained, tokenizer, run_dir / "adapter", engines)
        assert after(prompts, decoding, None) == ["", ""]
        assert fake_vllm.alive == [] and fake_vllm.peak == 1
    first, second = fake_vllm.made
    assert first.kwargs["model"] == cfg.model.name and not first.kwargs["enable_lora"]
    assert first.requests == [(2, None)]
    if config == "rinna-3.6b-seed":
        assert second.kwargs["model"] == str(run_dir / MERGED_DIR) and not second.kwargs["enable_lora"]
        assert "model.safetensors" in second.model_files and "spiece.model" in second.model_files
        assert second.requests == [(2, None)]
        assert not (run_dir / MERGED_DIR).exists()
    else:
        assert second.kwargs["model"] == cfg.model.name and second.kwargs["enable_lora"]
        assert second.kwargs["max_lora_rank"] >= cfg.lora.r
        ((count, lora),) = second.requests
        assert count == 2 and lora.path == str(run_dir / "adapter")


def test_engines_hold_one_engine_at_a_time(fake_vllm, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    engines = VllmEngines()
    settings = dict(dtype="float16", max_length=64, lora_rank=None)
    one = engines.get(tmp_path / "a", None, **settings)
    assert engines.get(tmp_path / "a", None, **settings) is one  # the same engine, not a second start
    engines.get(tmp_path / "b", None, **settings)
    assert len(fake_vllm.made) == 2 and fake_vllm.peak == 1 and fake_vllm.alive == [fake_vllm.made[1]]
    engines.close()
    assert fake_vllm.alive == []
