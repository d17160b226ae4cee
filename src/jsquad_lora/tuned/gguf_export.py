"""A trained model as one GGUF file (llama.cpp's format): weights, tokenizer and chat template.

llama.cpp's converter (`convert_hf_to_gguf.py`) is a script in llama.cpp's repository, not a package, so
what it does for the architectures below is written here by hand, with the `gguf` package's GGUFWriter
and tensor-name map (the names and keys are llama.cpp's own):

- metadata: the `{arch}.*` keys the converter writes for the architecture (`gemma3.context_length`, ...)
- tensors: the converter's names (`blk.N.attn_q.weight`), Gemma's RMS-norm weights stored as 1 + w
  (Gemma3RMSNorm scales by 1 + weight, llama.cpp by the stored weight), the output layer left out when it
  is the embedding matrix (tied)
- types, as the converter's --outtype: 1-D tensors and norms stay float32; a tensor q8_0 cannot hold (a
  row not a multiple of 32 wide) falls back to float16
- the tokenizer as a sentencepiece vocabulary (`tokenizer.ggml.model` "llama"): tokens, scores, types.
  The HF tokenizer holds BPE merges where llama.cpp's sentencepiece tokenizer merges by score, so a
  token's score is minus the rank of the first merge that makes it (llama.cpp then merges in the HF
  order); special tokens are CONTROL, other added tokens USER_DEFINED (their ▁ written as spaces, as the
  converter does), `<0xXX>` BYTE
- what a GGUF file cannot say and llama.cpp assumes (every 6th Gemma 3 layer global, attention scaled by
  the head size) is checked: a model that differs is refused before anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from jsquad_lora.errors import InputError

#: --quantize choices: the tensor type of every matrix (llama.cpp's --outtype)
QUANTIZATIONS = ("f32", "f16", "q8_0")
#: model_type → (gguf architecture, what the error messages call it)
ARCHITECTURES = {"gemma3_text": ("gemma3", "Gemma 3 (Gemma3ForCausalLM)")}


@dataclass
class Vocabulary:
    """The tokenizer as GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`)."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None


def supported_names() -> str:
    return ", ".join(name for _, name in ARCHITECTURES.values())


def check_architecture(config) -> None:
    """An InputError unless `config` (a transformers config) is an architecture written here, in a layout
    llama.cpp reads the same way."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise InputError(
            f"model ({model_type}, {', '.join(getattr(config, 'architectures', None) or ['?'])})",
            "GGUF export does not support this architecture",
            fix=f"GGUF export supports {supported_names()}; export without --format gguf (safetensors), "
            "and convert with llama.cpp's convert_hf_to_gguf.py",
        )
    if problems := _gemma3_problems(config):
        raise InputError(
            f"model ({model_type})",
            "a GGUF file cannot hold this model as llama.cpp reads it: " + "; ".join(problems),
            fix="export without --format gguf (safetensors)",
        )


def _gemma3_problems(c) -> list[str]:
    problems = []
    layout = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(c.num_hidden_layers)]
    if list(c.layer_types) != layout:
        problems.append("layer_types is not every 6th layer global, the Gemma 3 layout llama.cpp assumes")
    # llama.cpp scales attention by 1/sqrt(head_dim), by 1/sqrt(hidden/heads) for the 62-layer 27B
    scalar = c.hidden_size // c.num_attention_heads if c.num_hidden_layers == 62 else c.head_dim
    if c.query_pre_attn_scalar != scalar:
        problems.append(f"query_pre_attn_scalar is {c.query_pre_attn_scalar}, llama.cpp uses {scalar}")
    if c.attn_logit_softcapping is not None:
        problems.append("attention logit softcapping (llama.cpp's Gemma 3 has none)")
    if c.hidden_activation != "gelu_pytorch_tanh":
        problems.append(f"hidden_activation {c.hidden_activation} (llama.cpp uses gelu_pytorch_tanh)")
    if _rope(c).get("rope_type", "default") not in ("default", "linear"):
        problems.append(f"rope_type {_rope(c)['rope_type']} (llama.cpp's Gemma 3 reads default or linear)")
    return problems


def _rope(c, layer_type: str = "full_attention") -> dict:
    rope = getattr(c, "rope_parameters", None) or {}
    return rope.get(layer_type, rope)


def sentencepiece_vocabulary(tokenizer, rows: int) -> Vocabulary:
    """The tokenizer as a sentencepiece GGUF vocabulary of `rows` tokens (the embedding's rows; ids the
    tokenizer lacks are written as unused `[PAD{id}]`). InputError for a tokenizer it cannot hold."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if getattr(tokenizer, "is_fast", False) else {}
    model = backend.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise InputError(
            "the run's tokenizer",
            f"a {model.get('type') or type(tokenizer).__name__} tokenizer: GGUF export writes a sentencepiece-style "
            "BPE tokenizer with byte fallback (Gemma's)",
            fix="export without --format gguf (safetensors)",
        )
    if len(tokenizer) > rows:
        raise InputError(
            "the run's tokenizer",
            f"{len(tokenizer)} tokens for {rows} embedding rows",
            fix="export without --format gguf",
        )
    first_merge: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        first_merge.setdefault(left + right, rank)
    added = {entry["id"]: entry for entry in backend.get("added_tokens", [])}
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens, scores, types = [], [], []
    for i in range(rows):
        piece = pieces[i] if i < len(pieces) else None
        if piece is None:
            token, score, kind = f"[PAD{i}]", -1000.0, gguf.TokenType.UNUSED
        elif i in added:
            special = added[i]["special"]
            token = piece if special else piece.replace("\u2581", " ")  # llama.cpp matches these in raw text
            score, kind = -1000.0, gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            token, score, kind = piece, 0.0, gguf.TokenType.BYTE
        elif i == tokenizer.unk_token_id:
            token, score, kind = piece, 0.0, gguf.TokenType.UNKNOWN
        else:
            token, score, kind = piece, -float(first_merge.get(piece, 0)), gguf.TokenType.NORMAL
        tokens.append(token)
        scores.append(score)
        types.append(int(kind))
    ids = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")}
    return Vocabulary(
        tokens,
        scores,
        types,
        {k: v for k, v in specials.items() if v is not None},
        add_bos=specials["bos"] is not None and ids[:1] == [specials["bos"]],
        add_eos=specials["eos"] is not None and ids[-1:] == [specials["eos"]] != plain[-1:],
        add_space_prefix=bool(plain) and tokenizer.convert_ids_to_tokens(plain[0]).startswith("\u2581"),
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    )


def write_gguf(path: Path, model, vocabulary: Vocabulary, quantize: str, *, name: str, license: str | None) -> None:
    """`model` (a checked architecture, any dtype) with `vocabulary` as the GGUF file `path`."""
    import gguf
    import numpy as np

    arch = ARCHITECTURES[model.config.model_type][0]
    file_type, matrix_type = {
        "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
        "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
        "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
    }[quantize]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if license:
        writer.add_license(license)
    _gemma3_metadata(writer, model.config)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocabulary(writer, vocabulary)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], model.config.num_hidden_layers)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp uses the embedding matrix when there is no output.weight
        stem, suffix = hf_name.rsplit(".", 1)
        if (stem := names.get_name(stem)) is None:
            raise InputError(
                f"tensor {hf_name}", "has no GGUF name for this architecture", fix="export without --format gguf"
            )
        data = tensor.detach().to("cpu").float().numpy()
        if stem.endswith("_norm"):
            data = data + np.float32(1)  # Gemma3RMSNorm: x * (1 + w); llama.cpp: x * w
        qtype = gguf.GGMLQuantizationType.F32 if data.ndim <= 1 or stem.endswith("_norm") else matrix_type
        try:
            encoded = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # q8_0 needs rows a multiple of 32 wide
            qtype = gguf.GGMLQuantizationType.F16
            encoded = gguf.quants.quantize(data, qtype)
        writer.add_tensor(f"{stem}.{suffix}", encoded, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gemma3_metadata(writer, c) -> None:
    """The keys llama.cpp's converter writes for Gemma 3 (Gemma3Model.set_gguf_parameters)."""
    import gguf

    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(_rope(c)["rope_theta"])
    if _rope(c).get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(_rope(c)["factor"])
    writer.add_sliding_window(c.sliding_window)
    if (local := _rope(c, "sliding_attention").get("rope_theta")) is not None:
        writer.add_rope_freq_base_swa(local)
    if c.final_logit_softcapping:
        writer.add_final_logit_softcapping(c.final_logit_softcapping)


def _add_vocabulary(writer, v: Vocabulary) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(v.tokens)
    writer.add_token_scores(v.scores)
    writer.add_token_types(v.types)
    for kind, token_id in v.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(v.add_bos)
    writer.add_add_eos_token(v.add_eos)
    writer.add_add_space_prefix(v.add_space_prefix)
    if v.chat_template:
        writer.add_chat_template(v.chat_template)
