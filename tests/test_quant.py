"""perro_pastor.quant against its oracle, ``gguf.quants`` (0.19.0): every type bit-exact.

Random inputs use fresh seeds; every assertion message carries the seed, so a failure can be
replayed with ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np
import pytest

import gguf
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from perro_pastor.quant import (
    BLOCK_DTYPES,
    TYPE_INFO,
    GGMLType,
    dequantize,
    dequantize_rows,
    matmul,
    round_half_away,
    row_nbytes,
)

# Types gguf 0.19.0 can quantize (it dequantizes every type).
QUANTIZABLE = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0,
               GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1]
BLOCK_TYPES = list(BLOCK_DTYPES)  # every type with a block struct (32-blocks and K-quants)
K_QUANTS = [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]


def fresh_rng() -> tuple[np.random.Generator, int]:
    seed = int(np.random.SeedSequence().entropy % 2**63)
    return np.random.default_rng(seed), seed


def odd_cols(qtype: GGMLType) -> int:
    """A row length of 3 blocks (96 for 32-blocks, 768 for K-quants; 96 for float types)."""
    return 3 * max(TYPE_INFO[qtype].block_size, 32)


def oracle(raw: np.ndarray, qtype: GGMLType) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf_dequantize(raw, gguf.GGMLQuantizationType(int(qtype))).astype(np.float32)


def random_blocks(rng: np.random.Generator, qtype: GGMLType, rows: int, cols: int,
                  finite: bool = True) -> np.ndarray:
    """Random raw bytes for a (rows, cols) matrix: every bit pattern of the quant fields. With
    ``finite``, the f16 scale fields are overwritten with finite values so NaN/inf cannot hide a
    difference."""
    raw = rng.integers(0, 256, size=(rows, row_nbytes(qtype, cols)), dtype=np.uint8)
    if finite:
        blocks = raw.reshape(-1).view(BLOCK_DTYPES[qtype])
        for name in blocks.dtype.names:
            if blocks.dtype[name] == np.dtype("<f2"):
                blocks[name] = rng.uniform(-2.0, 2.0, size=blocks.shape) * 10.0 ** rng.integers(-6, 1, size=blocks.shape)
    return raw


# -----------------------------------------------------------------------------
# dequantize vs gguf.quants


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_dequantize_matches_gguf_on_quantized_data(qtype: GGMLType) -> None:
    rng, seed = fresh_rng()
    cols = odd_cols(qtype)
    # rows at different scales, plus a constant row (d = 0 or min = max edge cases)
    w = (rng.standard_normal((3, cols)) * np.array([[1e-3], [1.0], [40.0]])).astype(np.float32)
    w = np.concatenate([w, np.full((1, cols), 0.5, dtype=np.float32)])
    raw = gguf_quantize(w, gguf.GGMLQuantizationType(int(qtype)))
    assert raw.dtype == np.uint8 or qtype in (GGMLType.F32, GGMLType.F16)
    raw = raw.view(np.uint8)
    got = dequantize(raw, qtype)
    assert got.dtype == np.float32 and got.shape == (w.size,)
    np.testing.assert_array_equal(got, oracle(raw, qtype).reshape(-1), err_msg=f"seed={seed}")


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf_on_random_blocks(qtype: GGMLType) -> None:
    rng, seed = fresh_rng()
    cols = 512 if qtype in K_QUANTS else 96  # 2 K-blocks / 3 small blocks per row, 3 rows
    raw = random_blocks(rng, qtype, 3, cols)
    got = dequantize(raw, qtype)
    want = oracle(raw, qtype).reshape(-1)
    assert np.isfinite(want).all(), f"seed={seed}: test data should have finite scales"
    np.testing.assert_array_equal(got, want, err_msg=f"seed={seed}")


@pytest.mark.parametrize("qtype", list(TYPE_INFO), ids=lambda t: t.name)
def test_dequantize_non_finite_scales_like_gguf(qtype: GGMLType) -> None:
    """Unfiltered random bytes: NaN/inf scales must land where gguf puts them, no warnings."""
    rng, seed = fresh_rng()
    cols = odd_cols(qtype)
    raw = rng.integers(0, 256, size=(4, row_nbytes(qtype, cols)), dtype=np.uint8)
    with np.errstate(all="raise"):
        got = dequantize(raw, qtype)
    np.testing.assert_array_equal(got, oracle(raw, qtype).reshape(-1), err_msg=f"seed={seed}")


@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.BF16], ids=lambda t: t.name)
def test_dequantize_n_and_out(qtype: GGMLType) -> None:
    rng, seed = fresh_rng()
    cols = odd_cols(qtype)
    raw = random_blocks(rng, qtype, 2, cols) if qtype in BLOCK_DTYPES else \
        rng.standard_normal(2 * cols).astype(np.float32).view(np.uint16)[1::2].copy().view(np.uint8)
    full = dequantize(raw, qtype)
    # n reads only the first n weights' bytes, even from a larger buffer
    np.testing.assert_array_equal(dequantize(raw, qtype, cols), full[:cols], err_msg=f"seed={seed}")
    out = np.full(2 * cols, np.nan, dtype=np.float32)
    assert dequantize(raw, qtype, out=out) is out
    np.testing.assert_array_equal(out, full, err_msg=f"seed={seed}")


def test_dequantize_rejects_bad_sizes() -> None:
    raw = np.zeros(34 * 3, dtype=np.uint8)
    with pytest.raises(ValueError, match="101 bytes"):
        dequantize(raw[:101], GGMLType.Q8_0)
    with pytest.raises(ValueError, match="need 136 bytes, got 102"):
        dequantize(raw, GGMLType.Q8_0, 128)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        dequantize(raw, GGMLType.Q8_0, 33)
    with pytest.raises(ValueError, match="float32 of 96"):
        dequantize(raw, GGMLType.Q8_0, out=np.empty(96, dtype=np.float64))


# -----------------------------------------------------------------------------
# real blocks from the embedded default model


def test_dequantize_matches_gguf_on_default_model() -> None:
    """Real Q8_0 / Q4_1 / F32 blocks. The project's reader maps the bytes (GGUFReader would do,
    but takes 12 s on this file); the oracle decodes the same bytes."""
    from perro_pastor.formats import open_model_file
    from perro_pastor.paths import default_model_path

    try:
        path = default_model_path()
    except Exception as e:  # noqa: BLE001 - asset missing on this machine
        pytest.skip(f"default model not installed: {e}")
    model = open_model_file(path)
    seen = set()
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight",
                 "blk.29.attn_v.weight", "blk.0.attn_norm.weight"]:
        info = model.tensors[name]
        qtype = info.qtype
        seen.add(qtype)
        cols = info.shape[0]
        rows = info.n_elements // cols
        table = model.tensor_bytes(name)
        raw = table[: min(rows, 64) * row_nbytes(qtype, cols)]  # token_embd has 49152 rows
        want = oracle(raw, qtype).reshape(-1)
        got = dequantize(raw, qtype)
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert np.isfinite(got).all() and np.abs(got).max() < 100, f"{name}: not weights"
        # one row through the row API, on the whole table's bytes
        row = dequantize_rows(table, qtype, rows, cols, min(rows, 64) - 1, min(rows, 64))
        np.testing.assert_array_equal(row[0], want[-cols:], err_msg=name)
    assert seen == {GGMLType.Q8_0, GGMLType.Q4_1, GGMLType.F32}


# -----------------------------------------------------------------------------
# dequantize_rows and matmul


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q6_K, GGMLType.F16], ids=lambda t: t.name)
def test_dequantize_rows_is_a_slice_of_the_table(qtype: GGMLType) -> None:
    rng, seed = fresh_rng()
    rows, cols = 11, odd_cols(qtype)
    raw = (random_blocks(rng, qtype, rows, cols) if qtype in BLOCK_DTYPES
           else rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8))
    table = dequantize(raw, qtype).reshape(rows, cols)
    for start, stop in [(0, 1), (10, 11), (3, 8), (5, 5)]:
        got = dequantize_rows(raw, qtype, rows, cols, start, stop)
        np.testing.assert_array_equal(got, table[start:stop], err_msg=f"seed={seed} {start}:{stop}")
    with pytest.raises(ValueError, match="row range 9:12 outside 0:11"):
        dequantize_rows(raw, qtype, rows, cols, 9, 12)
    with pytest.raises(ValueError, match=f"12x{cols} needs"):
        dequantize_rows(raw, qtype, 12, cols, 0, 1)


@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q5_1, GGMLType.Q3_K,
                                   GGMLType.Q4_K, GGMLType.F32], ids=lambda t: t.name)
def test_matmul_matches_float64_reference(qtype: GGMLType) -> None:
    rng, seed = fresh_rng()
    rows, cols, T = 37, (512 if qtype in K_QUANTS else 96), 3
    raw = (random_blocks(rng, qtype, rows, cols) if qtype in BLOCK_DTYPES
           else rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8))
    w64 = oracle(raw, qtype).reshape(rows, cols).astype(np.float64)
    x = rng.standard_normal((T, cols))
    want = x @ w64.T
    msg = f"seed={seed}"
    whole = matmul(x, raw, qtype, rows, cols, row_chunk=rows)
    assert whole.dtype == np.float64 and whole.shape == (T, rows)
    np.testing.assert_allclose(whole, want, rtol=1e-12, atol=1e-12 * np.abs(want).max(), err_msg=msg)
    # chunking changes only which BLAS call sums each dot product
    for chunk in (1, 5, 36, 1000, None):
        got = matmul(x, raw, qtype, rows, cols, row_chunk=chunk)
        np.testing.assert_allclose(got, whole, rtol=1e-12, atol=1e-12 * np.abs(want).max(),
                                   err_msg=f"{msg} row_chunk={chunk}")
    # one token as a vector
    np.testing.assert_allclose(matmul(x[1], raw, qtype, rows, cols, 8), want[1], rtol=1e-12,
                               atol=1e-12 * np.abs(want).max(), err_msg=msg)
    # float32 in, float32 out, within f32 rounding of the reference
    got32 = matmul(x.astype(np.float32), raw, qtype, rows, cols, row_chunk=7)
    assert got32.dtype == np.float32
    scale = np.abs(x).max() * np.abs(w64).max() * cols
    np.testing.assert_allclose(got32, want, rtol=0, atol=1e-6 * scale, err_msg=msg)


def test_matmul_rejects_bad_inputs() -> None:
    raw = np.zeros((4, 34), dtype=np.uint8)
    x = np.zeros((2, 32))
    with pytest.raises(ValueError, match="Q8_0 matrix 5x32 needs 170 bytes, got 136"):
        matmul(x, raw, GGMLType.Q8_0, 5, 32)
    with pytest.raises(ValueError, match=r"shape \(2, 64\), expected \(T, 32\)"):
        matmul(np.zeros((2, 64)), raw, GGMLType.Q8_0, 4, 32)
    with pytest.raises(ValueError, match="float32 or float64"):
        matmul(x.astype(np.int32), raw, GGMLType.Q8_0, 4, 32)
    with pytest.raises(ValueError, match="row_chunk"):
        matmul(x, raw, GGMLType.Q8_0, 4, 32, row_chunk=0)


def test_round_half_away_rounds_halves_away_from_zero_like_c() -> None:
    """GGML's rounding (C's roundf), which the fused LoRA factors use: NumPy's rint rounds
    halves to even instead."""
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -126.5, 126.5, 3.2, -3.7, 0.0])
    np.testing.assert_array_equal(round_half_away(x), [1, -1, 2, -2, 3, -3, 0, -127, 127, 3, -4, 0])
    assert not np.array_equal(round_half_away(x), np.rint(x))
