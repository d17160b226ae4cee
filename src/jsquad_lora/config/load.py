"""Run configuration loaded: a YAML file or a shipped preset, `key=value` overrides, checked into `RunConfig`.

A wrong key or type fails at start with the file, the key and the allowed values, not an hour
into training. The resolved config is written into every run directory (`config.yaml`). The presets
(`presets/*.yaml`) ship inside the package, so an installed (non-editable) package has them too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from jsquad_lora.config.schema import RunConfig, _fail
from jsquad_lora.errors import InputError, brief
from jsquad_lora.util.jsonio import lone_surrogate, shown

#: the shipped presets (package data): `--config NAME` finds NAME.yaml here
CONFIG_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_CONFIG = "gemma-3-270m.yaml"


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Check `value` against a type hint, converting only what YAML cannot express (int → float)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        # the member of the value's shape (data.train: a source, or a list of them); else the first
        shaped = [a for a in inner if (get_origin(a) is list) == isinstance(value, list)]
        return _coerce(value, (shaped or inner)[0], source, key)
    if origin is Literal:
        if value not in args:
            _fail(source, key, f"{brief(value)} is not allowed", f"use one of: {', '.join(map(str, args))}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            _fail(source, key, f"expected a mapping, got {type(value).__name__} {brief(value)}", "write {a: b, c: d}")
        return {_coerce(k, args[0], source, key): _coerce(v, args[1], source, key) for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            _fail(
                source,
                key,
                f"expected a list, got {type(value).__name__} {brief(value)}",
                "write a YAML list, e.g. [query_key_value]",
            )
        return [_coerce(v, args[0], source, key) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            _fail(source, key, f"{str(value)[:20]}... is too large for a number", "give a finite number")
    if hint is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 3e-3 as a string; accept any text that is a number
        try:
            value = float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        _fail(
            source,
            key,
            f"expected {hint.__name__}, got {type(value).__name__} {brief(value)}",
            f"give a {hint.__name__} value",
        )
    import math

    if hint is float and not math.isfinite(value):
        _fail(
            source,
            key,
            f"must be a finite number, got {brief(value)}",
            "give a finite number: NaN and infinity are not allowed (and a value such as 1e400 overflows to infinity)",
        )
    if hint is str and (found := lone_surrogate(value)):
        _fail(
            source,
            key,
            f"not valid text: it holds {found} (a byte that is not UTF-8, or a lone \\ud800-style escape)",
            "give the value as UTF-8 text",
        )
    return value


def _source_of(path: str, source: str, overrides: dict[str, str] | None) -> str:
    """Who set the key at `path`: the last `key=value` override that set it, a section above it or a key
    below it ("override train.epochs=x"), else the config file."""
    for key, text in reversed(list((overrides or {}).items())):
        if key == path or path.startswith((key + ".", key + "[")) or key.startswith(path + "."):
            return _override_source(text)
    return source


def _build(cls: type, data: Any, source: str, prefix: str = "", overrides: dict[str, str] | None = None) -> Any:
    """`cls` from a mapping. `overrides`: dotted key → the `key=value` text that set it, so that an error
    about such a key names the override, not the file."""
    if not isinstance(data, dict):
        _fail(
            _source_of(prefix.rstrip("."), source, overrides) if prefix else source,
            prefix.rstrip(".") or "top level",
            f"expected a mapping, got {type(data).__name__}",
            "write `key: value` lines",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        key_source = _source_of(path, source, overrides)
        if key not in names:
            _fail(key_source, path, "unknown key", f"known keys here: {', '.join(sorted(names))}")
        hint = hints[key]
        kwargs[key] = (
            _build(hint, value, source, path + ".", overrides)
            if dataclasses.is_dataclass(hint)
            else _coerce(value, hint, key_source, path)
        )
        choices = fields[key].metadata.get("choices")  # a registry: its names, read now
        if choices is not None and kwargs[key] not in choices:
            _fail(key_source, path, f"{brief(kwargs[key])} is not allowed", f"use one of: {', '.join(choices)}")
    return cls(**kwargs)


def find_config(name: str | None) -> Path:
    """A config path as given, or a shipped preset name (presets/, with or without .yaml)."""
    if not name:
        return CONFIG_DIR / DEFAULT_CONFIG
    path = Path(name)
    if path.exists():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.exists():
            return candidate
    presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise InputError(name, "config file not found", fix=f"pass a YAML path or a preset: {presets}")


def _override_source(text: str) -> str:
    """An override as an error's source: "override train.epochs=x", printable and of sensible length."""
    return "override " + shown(text if len(text) <= 100 else text[:100] + "…")


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden by later keys
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error follows
                if first is not key_node.start_mark:
                    raise _DuplicateKeyError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {brief(key)} (first on line {first.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


#: the most values (scalars, lists, mappings) a config may hold once YAML's aliases are expanded: a
#: config holds about a hundred; `&a [*b, *b, ...]` chains multiply, and every later step (checking,
#: error messages, the resolved config.yaml) would walk the expanded tree
MAX_CONFIG_VALUES = 10_000


EXPANSION_FIX = "write the values out: anchors and aliases are for sharing a block, not for multiplying one"


class _ExpansionError(yaml.YAMLError):
    """A document whose aliases expand beyond MAX_CONFIG_VALUES values, or refer to themselves."""

    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for with every alias expanded (shared nodes counted each time)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_nodes:
        raise _ExpansionError("an alias refers to a node that contains it (a recursive value)", node.start_mark)
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, memo, open_nodes)
        if size > MAX_CONFIG_VALUES:
            raise _ExpansionError(
                f"its aliases (*name) expand to more than {MAX_CONFIG_VALUES:,} values", node.start_mark
            )
    open_nodes.discard(key)
    memo[key] = size
    return size


def _load_yaml(text: str) -> Any:
    """One YAML document, refused (_ExpansionError) before it is built when its aliases expand too far."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise InputError(
            _override_source(text),
            "an override must look like key=value",
            fix="e.g. train.epochs=3 or lora.target_modules=[all-linear]",
        )
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw) if raw != "" else ""
    except _DuplicateKeyError as err:
        raise InputError(_override_source(text), str(err.problem), fix="give each key once") from None
    except _ExpansionError as err:
        raise InputError(_override_source(text), err.problem, fix=EXPANSION_FIX) from None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise InputError(
            _override_source(text), "the value is nested too deeply", fix="give a plain value such as 3 or [a, b]"
        ) from None
    return key.strip().split("."), value


def load_config(path: Path | str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (default: the offline preset) and apply `key=value` overrides."""
    source = find_config(str(path) if path else None)
    try:
        data = _load_yaml(source.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        if isinstance(err, _DuplicateKeyError):
            fix = "keep one entry per key in each mapping (YAML keeps only the last, silently)"
        elif isinstance(err, _ExpansionError):
            fix = EXPANSION_FIX
        else:
            fix = "repair the YAML syntax"
        raise InputError(source, f"invalid YAML: {getattr(err, 'problem', err)}", where=where, fix=fix) from None
    except UnicodeDecodeError:
        raise InputError(source, "not UTF-8 text", fix="re-save the config as UTF-8") from None
    except RecursionError:
        raise InputError(
            source,
            "nested too deeply: its mappings/lists nest beyond what the YAML reader can follow",
            fix="a config is two levels deep (`section:` blocks of `key: value`); check the file is the one you meant",
        ) from None
    except OSError as err:
        raise InputError(
            source, f"cannot read the config ({err.strerror or err})", fix="pass a readable YAML file"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            source,
            f"a config must be a mapping, got {type(data).__name__}",
            fix="write `section:` blocks of `key: value`",
        )
    sources: dict[str, str] = {}  # dotted key → the override that set it, for errors about it
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise InputError(
                    _override_source(text),
                    f"{key} is not a section",
                    where=".".join(keys[: depth + 1]),
                    fix="override a leaf key such as train.epochs",
                )
        node[keys[-1]] = value
        sources[".".join(keys)] = text
    try:
        return _build(RunConfig, data, str(source), overrides=sources)
    except InputError as err:  # a range or cross-field rule (_validate): name who set the value
        if err.source != "config":
            raise
        who = _source_of(err.where or "", str(source), sources)
        raise InputError(who, err.problem, where=err.where, fix=err.fix) from None


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), allow_unicode=True, sort_keys=False)
