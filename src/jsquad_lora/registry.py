"""The one registry mechanism: every kind of named choice the tool offers, and where its entries are defined.

Each registry maps names to entries of one kind. Entries are registered in their home module, beside their
code (`@TEMPLATES.register("seed", ...)`-style helpers there); a registry imports its home the first time
it is read, so that whoever reads names (config validation, the CLI's choices, the report) imports only
this file. An entry may also be a lazy "module:attr" string (lm-evaluation-harness's convention), resolved
when the entry is first used: for entries whose import is heavy (the vLLM backend).

This module imports nothing of the tool's: it sits below every stage, so no registry creates an import
cycle (tests/test_import_contract.py checks the import graph, and that every home below exists).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import Any


class Registry(MutableMapping):
    """Names → entries of one kind, in registration order (built-ins first)."""

    def __init__(self, kind: str, home: str) -> None:
        self.kind = kind  # "template", "scorer", ...: the word in error messages
        self.home = home  # the module whose import registers the built-in entries
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: the home's own registrations must not load it again
            importlib.import_module(self.home)

    def register(self, name: str, entry: Any) -> Any:
        """Add `entry` under `name` (an object, or a lazy "module:attr" string); a name is registered once."""
        self._load()
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get_entry(self, name: str) -> Any:
        """The entry of `name`; ValueError naming what is available for an unknown name."""
        if name not in self:
            raise ValueError(f"Unknown {self.kind} {name!r}. Available: {', '.join(self)}")
        return self[name]

    def __getitem__(self, name: str) -> Any:
        self._load()
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:  # lazy: import it now, once
            module, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def __setitem__(self, name: str, entry: Any) -> None:
        self._load()
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        self._load()
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


#: prompt templates: prompt.template, `prompt --template`
TEMPLATES = Registry("template", "jsquad_lora.prompts.templates")
#: decoding modes: eval.decoding, `ask/serve --decoding`, the vLLM backend's check
DECODING_MODES = Registry("decoding mode", "jsquad_lora.generate.decoding")
#: scorers: metrics.json, the report's columns, `score --metric`
SCORERS = Registry("scorer", "jsquad_lora.evaluate.scorers")
#: evaluation backends: eval.backend (hf, vllm)
EVAL_BACKENDS = Registry("evaluation backend", "jsquad_lora.evaluate.backends")
#: where a base model comes from: model.name / model.gguf_file (tiny, the built-in Gemma, a GGUF file, hub or local)
MODEL_SOURCES = Registry("model source", "jsquad_lora.model.sources")
#: data formats: what a DATA argument or data.dir holds
DATA_FORMATS = Registry("data format", "jsquad_lora.data.formats")

#: every registry, by what it holds (the import-contract test checks their homes)
REGISTRIES = {r.kind: r for r in (TEMPLATES, DECODING_MODES, SCORERS, EVAL_BACKENDS, MODEL_SOURCES, DATA_FORMATS)}
