"""Shared fixtures for the gl kernel tests: a headless context and random GGML blocks."""

from __future__ import annotations

import numpy as np

import pytest

from perro_pastor import quant
from perro_pastor.gl.context import GLContext
from perro_pastor.gl.kernels import Kernels
from perro_pastor.quant import TYPE_INFO, GGMLType, row_nbytes

ALL_TYPES = [
    GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1,
    GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
    GGMLType.Q6_K,
]

# Byte offsets of the f16 scale fields in each block; random bytes there could be NaN/inf.
_F16_FIELDS = {
    GGMLType.Q4_0: [0], GGMLType.Q4_1: [0, 2], GGMLType.Q5_0: [0], GGMLType.Q5_1: [0, 2],
    GGMLType.Q8_0: [0], GGMLType.Q2_K: [80, 82], GGMLType.Q3_K: [108], GGMLType.Q4_K: [0, 2],
    GGMLType.Q5_K: [0, 2], GGMLType.Q6_K: [208],
}


# mat-vec and mat-mat tolerance: the kernels decode exactly the weights the twin decodes and only
# sum in another f32 order (see tests/test_gl_matvec.py)
RTOL = 2e-5


def check_close(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str) -> None:
    """llm.c-style report: the first mismatches and the max error. ``bound`` is sum |w * x|."""
    bad = np.abs(got - want) > RTOL * bound + 1e-6
    if bad.any():
        idx = np.argwhere(bad)[:5]
        lines = [f"  {tuple(i)}: got {got[tuple(i)]:.7g} want {want[tuple(i)]:.7g}" for i in idx]
        raise AssertionError(f"{what}: {bad.sum()} mismatches, max |err| {np.abs(got - want).max():.3g}\n"
                             + "\n".join(lines))


def random_weight(qtype: GGMLType, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random raw bytes of a (rows, cols) tensor: every bit pattern of the quants, sane scales."""
    if qtype == GGMLType.F32:
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    if qtype == GGMLType.F16:
        return rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    if qtype == GGMLType.BF16:
        f = rng.standard_normal((rows, cols)).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
    info = TYPE_INFO[qtype]
    nblocks = rows * cols // info.block_size
    raw = rng.integers(0, 256, size=(nblocks, info.type_size), dtype=np.uint8)
    for off in _F16_FIELDS[qtype]:
        scale = (rng.uniform(0.002, 0.05, nblocks) * rng.choice([-1, 1], nblocks)).astype(np.float16)
        raw[:, off : off + 2] = scale.view(np.uint8).reshape(nblocks, 2)
    return raw.reshape(rows, row_nbytes(qtype, cols))


def dequantize(raw: np.ndarray, qtype: GGMLType, rows: int, cols: int) -> np.ndarray:
    """Float64 weights from the NumPy twin (itself checked bit for bit against gguf.quants)."""
    return quant.dequantize(raw, qtype, rows * cols).reshape(rows, cols).astype(np.float64)


@pytest.fixture(scope="module")
def glctx():
    ctx = GLContext()
    yield ctx
    ctx.release()


@pytest.fixture(scope="module")
def kernels(glctx):
    return Kernels(glctx)
