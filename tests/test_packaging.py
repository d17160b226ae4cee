"""An installed (non-editable) package has what the source tree has: the presets, the report's script and
the serve page are package data, found through the package itself, not through the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (ROOT / "src" / "jsquad_lora" / "config" / "presets").glob("*.yaml"))


def test_a_built_wheel_ships_and_finds_its_presets_and_assets(tmp_path):
    tree = tmp_path / "tree"  # a copy: building writes build/ and egg-info beside the sources
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(tree)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("*.whl")
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    assert sorted(p.name for p in (installed / "jsquad_lora" / "config" / "presets").glob("*.yaml")) == PRESETS

    probe = (
        "import jsquad_lora, sys\n"
        "from jsquad_lora.config.load import load_config\n"
        "from jsquad_lora.report.question_browser import script\n"
        "from jsquad_lora.tuned.serve import page_html\n"
        f"assert jsquad_lora.__file__.startswith({str(installed)!r}), jsquad_lora.__file__\n"
        f"names = [load_config(p.removesuffix('.yaml')).name for p in {PRESETS!r}]\n"
        "assert load_config(None).name == 'gemma-3-270m'\n"
        "assert 'function' in script() and '<html' in page_html('run', 'greedy').lower()\n"
        "print(' '.join(names))\n"
    )
    env = {"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "gemma-3-270m-documents",
        "gemma-3-270m-full",
        "gemma-3-270m-question",
        "gemma-3-270m",
        "qwen2.5-3b-chat",
        "qwen2.5-7b-fsdp",
        "qwen2.5-coder-0.5b-full",
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-1.5b",
        "rinna-3.6b-best",
        "rinna-3.6b-seed",
        "tiny-cpu",
    ]
