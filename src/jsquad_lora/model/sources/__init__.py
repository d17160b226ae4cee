"""The model sources (`registry.MODEL_SOURCES`): the first by precedence that claims a `model:` config provides it.

An explicit GGUF file wins over any name; the built-in Gemma, the built-in Qwen2.5-Coder models and the tiny
model are claimed by name; anything else is a hub id or a local directory. A new source is a module here and
one name below.
"""

from jsquad_lora.model.sources import gemma, gguf_file, hub, qwen_coder, tiny  # noqa: F401  (each registers itself)
