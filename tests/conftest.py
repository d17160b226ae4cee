import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "jsquad"
os.environ.setdefault("JSQUAD_DIR", str(SHARED))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: the tiny model, smaller still: what every fast test run starts from
TINY_MODEL = [
    "--config",
    "tiny-cpu",
    "model.tiny_layers=2",
    "model.tiny_hidden=64",
    "model.tiny_heads=4",
    "model.tiny_intermediate=128",
]
#: overrides that make the offline default small enough for tests (seconds, not minutes)
TINY_TEST = [
    *TINY_MODEL,
    "model.max_length=640",
    "data.train_limit=96",
    "data.eval_limit=24",
    "train.epochs=1",
    "train.batch_size=8",
    "train.logging_steps=2",
    "train.save_steps=4",
    "eval.batch_size=8",
    "eval.max_new_tokens=12",
]


def needs_data():
    return pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/jsquad")


#: Debian's chromium, headless, with nothing that reaches the network on its own
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium driven by Playwright: the system's browser (Playwright downloads none).
    Missing, it fails with how to install it; JSQUAD_SKIP_BROWSER=1 skips the browser tests instead."""
    import shutil

    if os.environ.get("JSQUAD_SKIP_BROWSER") == "1":
        pytest.skip("JSQUAD_SKIP_BROWSER=1: browser tests skipped")
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(
            "the browser tests need Chromium: apt-get install -y chromium (Debian; the README's test command "
            "does it), or CHROMIUM=/path/to/chrome; JSQUAD_SKIP_BROWSER=1 skips them",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only add overhead (and stall on a busy machine).
    A module asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(kib)`: a new tmpfs file system of that size, for the paths where the disk fills up;
    `resize(kib)` on it makes room again. Mounting needs root (CI runs as root): skipped otherwise."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = []

    class Disk(type(tmp_path)):
        def resize(self, kib: int) -> None:
            subprocess.run(["mount", "-o", f"remount,size={kib}k", str(self)], check=True)

    def make(kib: int):
        path = Disk(tmp_path / f"disk-{len(mounted)}")
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)], capture_output=True, text=True
        )
        if result.returncode:
            pytest.fail(f"cannot mount a tmpfs as root: {result.stderr.strip()}", pytrace=False)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
