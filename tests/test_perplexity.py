"""The fidelity figure: perplexity of the embedded default model with llama-perplexity's method,
against llama.cpp's own numbers on the same text (DESIGN.md §5)."""

from pathlib import Path

import pytest

from perro_pastor.model import load
from perro_pastor.perplexity import perplexity
from perro_pastor.tools.requantize import requantize

GPL3 = Path("/usr/share/common-licenses/GPL-3")
LLAMA_CPP_Q4_1 = 22.24  # llama-perplexity -c 256, first 12000 bytes of GPL-3
LLAMA_CPP_F16 = 22.17


@pytest.fixture(scope="module")
def text():
    if not GPL3.exists():
        pytest.skip("Debian's base-files GPL-3 text is not on this machine")
    return GPL3.read_bytes()[:12000].decode("utf-8")


def test_default_model_matches_llama_cpp(text):
    result = perplexity(load("default", backend="cpu"), text, n_ctx=256)
    assert result.chunks == 10
    assert abs(result.ppl / LLAMA_CPP_Q4_1 - 1) < 0.005, result


def test_f16_conversion_matches_llama_cpp(text, tmp_path):
    f16 = requantize("default", tmp_path / "smollm2-f16.gguf", "F16")
    result = perplexity(load(f16, backend="cpu"), text, n_ctx=256)
    assert abs(result.ppl / LLAMA_CPP_F16 - 1) < 0.005, result
