"""matvec_fused.comp against its NumPy twin (the cpu ops it fuses), for every GGML type: the
pre-norm, q/k/v stacked in one dispatch, w1/w3 with SwiGLU or GeGLU, the residual add.

Tolerance as in test_gl_matvec.py (same decode, f32 sums in another order), widened by the norm's
own f32 round-off: the bound is sum |w * xn| with xn the normalized x.
"""

from __future__ import annotations

import numpy as np
import pytest

from perro_pastor import cpu_ops
from perro_pastor.gl.buffers import f32_buffer, read_f32, upload_weight
from perro_pastor.gl.context import assert_no_gl_error
from perro_pastor.gl.fused_ops import FUSED_ROWS, fused_matvec_reference
from perro_pastor.quant import GGMLType

from gl_helpers import ALL_TYPES, check_close, dequantize, glctx, kernels, random_weight  # noqa: F401
from test_gl_matvec import cols_for

EPS = 1e-5


def _weights(glctx, qtype, shapes, rng, repack=None):  # noqa: F811
    raws = [random_weight(qtype, rows, cols, rng) for rows, cols in shapes]
    kw = {} if repack is None else {"repack": repack}
    gl = [upload_weight(glctx, raw, qtype, rows, cols, **kw) for raw, (rows, cols) in zip(raws, shapes)]
    return gl, [dequantize(raw, qtype, rows, cols) for raw, (rows, cols) in zip(raws, shapes)]


def _run_all_tiles(kernels, *args, **kw):  # noqa: F811
    for tiles in kernels.fused.tile_slices(args[1]):
        kernels.fused.matvec(*args, tiles=tiles, **kw)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_norm_and_stacked_qkv(glctx, kernels, qtype):  # noqa: F811
    """rmsnorm(x) * g, then wq, wk, wv (GQA: 4 query rows per key row) in one dispatch."""
    rng = np.random.default_rng([int(qtype), 1])
    cols = cols_for(qtype)
    shapes = [(8 * FUSED_ROWS, cols), (2 * FUSED_ROWS, cols), (2 * FUSED_ROWS, cols)]
    weights, ws = _weights(glctx, qtype, shapes, rng)
    assert kernels.fused.fits(*weights)
    x = (rng.standard_normal(cols) * 3).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    dsts = [f32_buffer(glctx, rows) for rows, _ in shapes]
    _run_all_tiles(kernels, tuple(dsts), tuple(weights), f32_buffer(glctx, x), norm=f32_buffer(glctx, g), eps=EPS)
    want = fused_matvec_reference(ws, x.astype(np.float64), g.astype(np.float64), EPS)
    xn = np.abs(cpu_ops.rmsnorm(x.astype(np.float64), g.astype(np.float64), EPS))
    for name, dst, w, (rows, _), exp in zip("qkv", dsts, ws, shapes, want):
        check_close(read_f32(dst, (rows,)), exp, np.abs(w) @ xn * 2, f"fused {name} {qtype.name}")
    assert_no_gl_error(glctx)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.F16],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("gelu", [False, True], ids=["swiglu", "geglu"])
def test_gate(glctx, kernels, qtype, gelu):  # noqa: F811
    """act(w1 xn) * (w3 xn) in one dispatch; an odd row count (the last tile half empty)."""
    rng = np.random.default_rng([int(qtype), 2, gelu])
    cols, rows = cols_for(qtype), 2 * 7 * FUSED_ROWS + 1
    weights, ws = _weights(glctx, qtype, [(rows, cols)] * 2, rng)
    x = rng.standard_normal(cols).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    dst = f32_buffer(glctx, rows + 1)
    _run_all_tiles(kernels, (dst,), tuple(weights), f32_buffer(glctx, x), norm=f32_buffer(glctx, g), eps=EPS,
                   gate=True, gelu=gelu)
    with np.errstate(over="ignore"):  # exp(-h) overflows for very negative h: silu -> -0
        want = fused_matvec_reference(ws, x.astype(np.float64), g.astype(np.float64), EPS, gate=True, gelu=gelu)[0]
    xn = cpu_ops.rmsnorm(x.astype(np.float64), g.astype(np.float64), EPS)
    h1, h3 = ws[0] @ xn, ws[1] @ xn
    bound = (np.abs(ws[0]) @ np.abs(xn)) * np.abs(h3) + (np.abs(ws[1]) @ np.abs(xn)) * np.abs(h1) + np.abs(want)
    got = read_f32(dst, (rows + 1,))
    check_close(got[:rows], want, bound * 2, f"fused gate {qtype.name} gelu={gelu}")
    assert got[rows] == 0.0  # the row past the end is not written
    assert_no_gl_error(glctx)


@pytest.mark.parametrize("repack", [False, True], ids=["raw", "repacked"])
def test_residual_add_without_norm(glctx, kernels, repack):  # noqa: F811
    """dst += W x (wo, w2 and the classifier): x as it is, the old dst kept and added to."""
    rng = np.random.default_rng([3, repack])
    rows, cols = 6 * FUSED_ROWS, 5 * 32
    (w,), (W,) = _weights(glctx, GGMLType.Q4_1, [(rows, cols)], rng, repack=repack)
    x = rng.standard_normal(cols).astype(np.float32)
    old = rng.standard_normal(rows).astype(np.float32)
    dst = f32_buffer(glctx, old)
    _run_all_tiles(kernels, (dst,), (w,), f32_buffer(glctx, x), accumulate=True)
    want = old + fused_matvec_reference([W], x.astype(np.float64))[0]
    check_close(read_f32(dst, (rows,)), want, np.abs(W) @ np.abs(x) + np.abs(old), f"fused residual repack={repack}")
    assert_no_gl_error(glctx)


def test_fits_refuses_what_one_dispatch_cannot_hold(glctx, kernels):  # noqa: F811
    rng = np.random.default_rng(4)
    (a, b), _ = _weights(glctx, GGMLType.Q8_0, [(2 * FUSED_ROWS, 64), (2 * FUSED_ROWS, 64)], rng)
    (c,), _ = _weights(glctx, GGMLType.Q4_0, [(2 * FUSED_ROWS, 64)], rng)
    (odd,), _ = _weights(glctx, GGMLType.Q8_0, [(2 * FUSED_ROWS + 1, 64)], rng)
    assert kernels.fused.fits(a, b)
    assert not kernels.fused.fits(a, c)  # two types
    assert not kernels.fused.fits(odd, a)  # a tile would straddle two weights
    assert kernels.fused.fits(a, odd)  # the last weight may end mid-tile
    assert kernels.fused.fits(odd, odd, gate=True) and not kernels.fused.fits(a, odd, gate=True)
