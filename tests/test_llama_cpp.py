"""eval.backend=llama_cpp: refused before any work where it cannot run (a decoding mode of this tool's own, a
run's adapter instead of a GGUF file)."""

from __future__ import annotations

import pytest
from conftest import TINY_TEST, needs_data

from jsquad_lora.cli import main


@needs_data()
@pytest.mark.parametrize("decoding", ["extractive"])
def test_llama_cpp_refuses_this_tools_own_decoding_before_any_work(tmp_path, capsys, decoding):
    out = tmp_path / "run"
    argv = ["evaluate", "--output", str(out), *TINY_TEST, "eval.backend=llama_cpp", f"eval.decoding={decoding}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "eval.backend=llama_cpp" in err and "eval.decoding=greedy" in err, err
    assert not out.exists()
