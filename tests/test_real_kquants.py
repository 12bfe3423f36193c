"""Real K-quant blocks, made by llama.cpp's quantizer (Gemma 3 270M Q4_K_M, fetched by
`make assets`): the NumPy dequantizers and the cpu kernels' packed tiles against gguf.quants bit
for bit, and the GL and cpu mat-vecs against float references, on tensors no test of ours
generated."""

from pathlib import Path

import gguf
import numpy as np
import pytest

from perro_pastor import quant
from perro_pastor.errors import ModelFormatError
from perro_pastor.formats import open_model_file
from perro_pastor.model import load

from gl_helpers import glctx, kernels  # noqa: F401

ASSET = Path(__file__).parent / "assets" / "gemma-3-270m-q4_k_m.gguf"
TENSORS = {"Q4_K": "blk.0.attn_output.weight", "Q6_K": "blk.0.ffn_down.weight",
           "Q5_0": "blk.0.attn_q.weight", "Q8_0": "blk.0.attn_v.weight"}


@pytest.fixture(scope="module")
def model_file():
    if not ASSET.exists():
        pytest.skip("run `make assets` (tools/fetch_test_assets.py) to fetch the K-quant model")
    mf = open_model_file(ASSET)
    yield mf
    mf.close()


@pytest.mark.parametrize("qtype", TENSORS)
def test_dequantize_matches_gguf_on_real_blocks(model_file, qtype):
    info = model_file.tensors[TENSORS[qtype]]
    assert info.qtype.name == qtype
    raw = model_file.tensor_bytes(info.name)
    ours = quant.dequantize(raw, info.qtype, info.n_elements)
    theirs = gguf.quants.dequantize(np.array(raw), gguf.GGMLQuantizationType[qtype]).reshape(-1)
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))


@pytest.mark.parametrize("qtype", TENSORS)
def test_packed_cpu_kernels_on_real_blocks(model_file, qtype):
    """The compiled cpu kernels' tiles hold exactly gguf's weights; their mat-vec is within
    float32 rounding of a float64 product."""
    from perro_pastor.packed_weights import pack
    info = model_file.tensors[TENSORS[qtype]]
    cols, rows = info.shape
    raw = model_file.tensor_bytes(info.name)
    want = gguf.quants.dequantize(np.array(raw), gguf.GGMLQuantizationType[qtype]).reshape(rows, cols)
    m = pack(raw, info.qtype, rows, cols)
    np.testing.assert_array_equal(m.dequantize(), want.astype(np.float32))
    x = np.random.default_rng().standard_normal((1, cols)).astype(np.float32)
    exact = x.astype(np.float64) @ want.astype(np.float64).T
    bound = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(want.astype(np.float64)).T)
    assert np.all(np.abs(m.matmul(x) - exact) <= bound + 1e-30)


@pytest.mark.parametrize("qtype", TENSORS)
def test_gl_matvec_on_real_blocks(model_file, kernels, glctx, qtype):
    from perro_pastor.gl.buffers import f32_buffer, read_f32, upload_weight
    from perro_pastor.gl.context import assert_no_gl_error

    info = model_file.tensors[TENSORS[qtype]]
    cols, rows = info.shape
    raw = np.array(model_file.tensor_bytes(info.name)).reshape(rows, -1)
    x = np.random.default_rng().standard_normal((2, cols)).astype(np.float32)
    w = upload_weight(glctx, raw, info.qtype, rows, cols)
    x_buf, dst = f32_buffer(glctx, x), f32_buffer(glctx, 2 * rows)
    kernels.matvec(dst, w, x_buf, n_tokens=2)
    got = read_f32(dst, 2 * rows).reshape(2, rows)
    weights = quant.dequantize(raw, info.qtype, rows * cols).reshape(rows, cols).astype(np.float64)
    want = x.astype(np.float64) @ weights.T
    scale = np.abs(x.astype(np.float64)) @ np.abs(weights).T
    assert np.all(np.abs(got - want) <= 2e-5 * scale + 1e-6), f"max err {np.abs(got - want).max():.3g}"
    assert_no_gl_error(glctx)


def test_an_unsupported_architecture_names_the_supported_ones():
    from perro_pastor.config import Config
    with pytest.raises(ModelFormatError, match=r"unsupported architecture 'gpt2' \(supported: llama, mistral, "
                                               r"qwen2, qwen3, phi3, gemma2, gemma3\)"):
        Config.from_metadata({"general.architecture": "gpt2"}, "x.gguf")
