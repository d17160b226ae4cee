"""The model source for `model.gguf_file`: any GGUF file, converted once into a cached model directory.

The file is named by its path (absolute, or relative to `model.name` when that is a directory); the
converted directory is named by the file's sha256, so the same file is converted once whatever its path.
The model is named, and its license given, as the file's own metadata says (`general.name`,
`general.license`, read with the `gguf` package's GGUFReader), else by the file's name: never by `model.name`,
which still holds its default (gemma-3-270m) when only the file is given. The built-in Gemma's own file
(`sources.gemma.GGUF_FILE`, its sha256 checked) is that model, with its terms.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from jsquad_lora.config.schema import ModelConfig
from jsquad_lora.errors import InputError
from jsquad_lora.model.gguf import converted, file_digest
from jsquad_lora.model.source import ModelSource, register_source
from jsquad_lora.model.sources.gemma import GEMMA_LICENSE, chat_template_for, is_builtin_gguf
from jsquad_lora.model.sources.gemma import NAME as GEMMA
from jsquad_lora.util.cache import models_cache

log = logging.getLogger(__name__)
#: the license text where the file's metadata states none
NO_LICENSE = "not stated: the GGUF file's metadata holds no general.license (see the model's own card)"


def gguf_path(cfg: ModelConfig) -> Path:
    """`model.gguf_file` as a path: absolute, or relative to `model.name` when that names a directory."""
    given = Path(cfg.gguf_file)
    # a name that is no directory (the default gemma-3-270m, tiny, a hub id) leaves the path as given
    return (
        given
        if given.is_absolute() or not Path(cfg.name).expanduser().is_dir()
        else Path(cfg.name).expanduser() / given
    )


def gguf_metadata(gguf: Path) -> dict[str, str]:
    """The file's `general.name` and `general.license` (those it holds, as text), read with GGUFReader (the
    header only: the tensors stay on disk). {} where the file cannot be read as GGUF."""
    try:
        from gguf import GGUFReader, GGUFValueType

        fields = GGUFReader(gguf).fields
    except (ImportError, OSError, ValueError, KeyError, IndexError) as err:
        log.warning("%s: its GGUF metadata could not be read (%s); the model is named by the file", gguf, err)
        return {}
    found = {}
    for key in ("general.name", "general.license"):
        field = fields.get(key)
        if field is not None and field.types == [GGUFValueType.STRING]:
            if text := str(field.contents()).strip():
                found[key] = text
    return found


def model_identity(gguf: Path) -> tuple[str, str]:
    """(name, license) of the model in `gguf`: the built-in Gemma's file is gemma-3-270m under Gemma's terms;
    any other is named by its metadata's general.name, else its file name without .gguf, and licensed as its
    metadata's general.license says, else `NO_LICENSE`."""
    try:
        stat = gguf.stat()
    except OSError:
        return gguf.stem, NO_LICENSE
    return _identity(str(gguf), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _identity(path: str, _mtime_ns: int, _size: int) -> tuple[str, str]:
    """`model_identity`, once per file version (the built-in's check hashes the file)."""
    gguf = Path(path)
    if is_builtin_gguf(gguf):
        return GEMMA, GEMMA_LICENSE
    metadata = gguf_metadata(gguf)
    name = metadata.get("general.name", gguf.stem)
    license_text = metadata.get("general.license")
    return name, f"{license_text} (as the GGUF file's metadata states)" if license_text else NO_LICENSE


def run_name(cfg: ModelConfig) -> str | None:
    """The run directory's default name: the file's name without .gguf, lowercased; None (the config's name)
    for the built-in Gemma's file under `model.name=gemma-3-270m`, the preset's own model. Reads no file."""
    gguf = gguf_path(cfg)
    if cfg.name == GEMMA and is_builtin_gguf(gguf, check_digest=False):
        return None
    return gguf.stem.lower()


def _resolve(cfg: ModelConfig) -> str:
    gguf = gguf_path(cfg)
    if not gguf.is_file():
        raise InputError(
            "model.gguf_file",
            f"GGUF file not found: {gguf}",
            fix="give the path of a .gguf file (absolute, or relative to model.name when that is a directory)",
        )
    return converted(gguf, models_cache() / f"gguf-{file_digest(gguf)[:16]}", chat_template_for(gguf))


register_source(
    ModelSource(
        "gguf-file",
        "a GGUF file (model.gguf_file), dequantised once into a cached safetensors model directory",
        claims=lambda cfg: bool(cfg.gguf_file),
        resolve=_resolve,
        describe=lambda cfg: (str(gguf_path(cfg)), model_identity(gguf_path(cfg))[1]),
        precedence=10,  # an explicit file wins over any model.name
        model_name=lambda cfg: model_identity(gguf_path(cfg))[0],
        run_name=run_name,
    )
)
