"""Tokenizers that are a sentencepiece model (rinna's `spiece.model`), segmented by sentencepiece itself.

rinna's model cards load the tokenizer with `use_fast=False`: the models were trained on the
segmentation of the `sentencepiece` library. transformers 5 ignores `use_fast=False` and converts
the model file into a `tokenizers` Unigram whose pre-tokenizer splits on whitespace and always
prepends `▁`: for the seed prompt it adds a `▁` that sentencepiece does not and drops the `▁` of
the trailing space of `システム: ` (docs/real-models.md). So a model directory published with
only a sentencepiece model (`spiece.model` / `tokenizer.model`, no `tokenizer.json`) is loaded
here: `SentencePieceTokenizer` is transformers' own sentencepiece backend (`SentencePieceBackend`,
a `PreTrainedTokenizer`) with the few methods that decide ids and text replaced by the library's:

- text → ids is `SentencePieceProcessor.encode(text)`, whole: a special token's text inside a
  passage (`</s>`, `[SEP]`) stays text, as sentencepiece encodes it;
- special tokens keep the ids the model file gives them (`</s>`, `[PAD]`); `add_special_tokens`
  adds what the original class added (T5Tokenizer, rinna's class: `</s>` at the end; LlamaTokenizer:
  `<s>` in front; `add_bos_token` / `add_eos_token` in tokenizer_config.json decide where given);
- ids → text is `SentencePieceProcessor.decode` between special tokens: byte-fallback pieces
  become their characters, and a space (`▁`) is kept where it is, first or last.

Written here because transformers 5 has no slow tokenizer that reproduces sentencepiece exactly
(its `SentencePieceBackend` strips the decoded text). `save_pretrained` writes the model file and
tokenizer_config.json with the original `tokenizer_class`, so other tools load the directory as
they load the original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from transformers import SentencePieceBackend

#: sentencepiece model files, as model directories name them
MODEL_FILES = ("spiece.model", "tokenizer.model")
#: (BOS in front, EOS at the end) that `add_special_tokens` adds, per original tokenizer class
SPECIAL_TOKEN_DEFAULTS = {"T5Tokenizer": (False, True), "LlamaTokenizer": (True, False)}


class SentencePieceTokenizer(SentencePieceBackend):
    """A sentencepiece model behind transformers' tokenizer interface; ids and text exactly the library's."""

    vocab_files_names = {"vocab_file": MODEL_FILES[0]}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, original_class: str | None = None, **kwargs) -> None:
        original_class = (original_class or kwargs.pop("tokenizer_class", None) or "T5Tokenizer").removesuffix("Fast")
        bos, eos = SPECIAL_TOKEN_DEFAULTS.get(original_class, (False, False))
        self.add_bos_token = bool(kwargs.pop("add_bos_token", bos))
        self.add_eos_token = bool(kwargs.pop("add_eos_token", eos))
        self.original_class = original_class
        for key in ("legacy", "from_slow", "extra_ids", "use_fast"):
            kwargs.pop(key, None)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        kwargs["special_tokens_pattern"] = {
            (True, True): "bos_eos",
            (True, False): "bos",
            (False, True): "eos",
            (False, False): "none",
        }[(self.add_bos_token, self.add_eos_token)]
        # legacy=True: the backend would otherwise switch the model's add_dummy_prefix off
        super().__init__(vocab_file=vocab_file, legacy=True, **kwargs)
        self.vocab_files_names = {"vocab_file": Path(vocab_file).name}

    # --- text → ids: sentencepiece, whole -----------------------------------------------------

    def tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id_with_added_voc(self, token: str) -> int:
        # a piece of the model is its own id, even where an added token has the same text
        piece = self.sp_model.piece_to_id(token)
        if self.sp_model.id_to_piece(piece) == token:
            return piece
        return super()._convert_token_to_id_with_added_voc(token)

    # --- ids → text: sentencepiece between special tokens -------------------------------------

    def _decode(
        self,
        token_ids: int | Sequence[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs,
    ) -> str:
        ids = [int(token_ids)] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        special, size = set(self.all_special_ids), self.sp_model.get_piece_size()
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i not in special and 0 <= i < size:
                run.append(i)
                continue
            if run:
                parts.append(self.sp_model.decode(run))
                run = []
            if not (skip_special_tokens and i in special):
                parts.append(self.convert_ids_to_tokens(i))
        if run:
            parts.append(self.sp_model.decode(run))
        text = "".join(parts)
        clean = (
            self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        )
        return self.clean_up_tokenization(text) if clean else text

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode(self.convert_tokens_to_ids(tokens))

    # --- saving: the original class name, so other tools load the directory as the original ----

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = super().save_pretrained(save_directory, *args, **kwargs)
        config_path = Path(save_directory) / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config.update(
            tokenizer_class=self.original_class, add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token
        )
        for key in ("special_tokens_pattern", "original_class", "backend"):
            config.pop(key, None)
        config_path.write_text(
            json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return files


def sentencepiece_model_file(files: Sequence[str]) -> str | None:
    """The sentencepiece model file of a model directory holding `files` (names) when the directory's
    tokenizer is that model: a model file and no `tokenizer.json` (its authors published no fast
    tokenizer, so theirs was sentencepiece's segmentation). None otherwise."""
    if "tokenizer.json" in files:
        return None
    return next((name for name in MODEL_FILES if name in files), None)


def sentencepiece_model_of(name: str, local: Path | None) -> str | None:
    """The sentencepiece model file that is the tokenizer of `name`, a local model directory (`local`)
    or a hub id (its file list asked of the hub, or the cache: None when neither answers)."""
    if local is not None:
        return sentencepiece_model_file([p.name for p in local.iterdir()])
    from transformers.utils.hub import cached_file

    present = [
        file
        for file in ("tokenizer.json", *MODEL_FILES)
        if cached_file(
            name, file, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False
        )
    ]
    return sentencepiece_model_file(present)


def load_sentencepiece_tokenizer(name: str, model_file: str, **kwargs) -> SentencePieceTokenizer:
    """`SentencePieceTokenizer` of a local model directory or hub id, its settings from tokenizer_config.json
    (special tokens, chat template, add_bos_token / add_eos_token, tokenizer_class)."""
    from transformers.utils.hub import cached_file

    config_file = cached_file(name, "tokenizer_config.json", _raise_exceptions_for_missing_entries=False)
    config = json.loads(Path(config_file).read_text(encoding="utf-8")) if config_file else {}
    return SentencePieceTokenizer.from_pretrained(
        name,
        vocab_file=cached_file(name, model_file),
        original_class=config.get("tokenizer_class") or "T5Tokenizer",
        **kwargs,
    )
