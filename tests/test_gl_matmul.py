"""matmul.comp (the batched-prefill mat-mat) and matmul_lanes.comp (the same on GPUs) against
their NumPy twin ``quant.matmul``.

Tolerance: as for the mat-vec (tests/test_gl_matvec.py), the kernel decodes exactly the weights the
twin decodes and only sums in another f32 order: |err| <= 2e-5 * sum|w*x| + 1e-6. Repacked Q4_0
applies its offset as d*q - 8d instead of d*(q - 8), one more f32 rounding per weight, well inside.
"""

from __future__ import annotations

import numpy as np
import pytest

from perro_pastor import quant
from perro_pastor.errors import BackendError
from perro_pastor.gl.buffers import REPACKABLE, f32_buffer, read_f32, upload_weight
from perro_pastor.gl.context import GLContext, assert_no_gl_error
from perro_pastor.gl.kernels import Kernels
from perro_pastor.gl.state import BufferSlice
from perro_pastor.gl_figures import DispatchTimer
from perro_pastor.quant import TYPE_INFO, GGMLType

from gl_helpers import ALL_TYPES, check_close, dequantize, glctx, kernels, random_weight  # noqa: F401

TOKENS = [2, 7, 33, 128]
LAYOUTS = [(t, False) for t in ALL_TYPES] + [(t, True) for t in ALL_TYPES if t in REPACKABLE]


def shape(qtype: GGMLType, odd: bool) -> tuple[int, int]:
    """(rows, cols): odd = an odd number of rows and of blocks per row (every byte alignment of a
    raw block, a repacked group of 4 straddling rows, a partial row tile); even = whole tiles."""
    bs = TYPE_INFO[qtype].block_size
    bs = 8 if bs == 1 else bs
    return (37, 3 * bs) if odd else (256, 4 * bs)


@pytest.fixture(scope="module", params=["matmul", "lanes"])
def matmul_kernels(request, glctx):  # noqa: F811
    """Kernels whose mat-mat is matmul.comp (a CPU rasterizer's) or matmul_lanes.comp (a GPU's)."""
    return Kernels(glctx, matmul_lanes=request.param == "lanes")


def run_matmul(glctx, k: Kernels, raw, qtype, rows, cols, x, repack, **kw) -> np.ndarray:  # noqa: F811
    T = x.shape[0]
    w = upload_weight(glctx, raw, qtype, rows, cols, repack=repack)
    assert w.repacked == repack
    dst = f32_buffer(glctx, T * rows)
    k.matmul(dst, w, f32_buffer(glctx, x), T, **kw)
    got = read_f32(dst, (T, rows))
    w.release()
    dst.release()
    return got


@pytest.mark.parametrize("qtype,repack", LAYOUTS, ids=lambda v: v.name if isinstance(v, GGMLType) else
                         ("repacked" if v else "raw"))
@pytest.mark.parametrize("odd", [True, False], ids=["odd", "even"])
def test_matmul_every_type(glctx, matmul_kernels, qtype, repack, odd):  # noqa: F811
    rng = np.random.default_rng([int(qtype), repack, odd])
    rows, cols = shape(qtype, odd)
    raw = random_weight(qtype, rows, cols, rng)
    W = dequantize(raw, qtype, rows, cols)
    for T in TOKENS:
        x = rng.standard_normal((T, cols)).astype(np.float32)
        got = run_matmul(glctx, matmul_kernels, raw, qtype, rows, cols, x, repack)
        want = quant.matmul(x.astype(np.float64), raw, qtype, rows, cols)  # the twin
        check_close(got, want, np.abs(x) @ np.abs(W).T, f"matmul {qtype.name} repack={repack} {rows}x{cols} T={T}")
        assert_no_gl_error(glctx)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q6_K], ids=lambda t: t.name)
def test_matmul_accumulate_row_range_stride_scale(glctx, matmul_kernels, qtype):  # noqa: F811
    """dst[t, 3 + r] += 0.5 * W x over a row range split in two calls, in a wider dst (a LoRA B
    half writes with a scale; a scheduler spreads one mat-mat over two ticks)."""
    kernels = matmul_kernels
    rng = np.random.default_rng(5)
    rows, cols, T, stride = 101, 2 * TYPE_INFO[qtype].block_size, 33, 110
    raw = random_weight(qtype, rows, cols, rng)
    w = upload_weight(glctx, raw, qtype, rows, cols)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    base = rng.standard_normal((T, stride)).astype(np.float32)
    dst = f32_buffer(glctx, base)
    xb = f32_buffer(glctx, x)
    for a, n in [(0, 48), (48, 53)]:  # (48: a whole number of matmul_lanes.comp's row tiles)
        kernels.matmul(dst, w, xb, T, accumulate=True, row_offset=a, n_rows=n, dst_stride=stride, scale=0.5)
    W = dequantize(raw, qtype, rows, cols)
    want = base.astype(np.float64)
    want[:, :rows] += 0.5 * x @ W.T
    bound = np.abs(base) + 0.5 * np.abs(x) @ np.abs(np.pad(W, ((0, stride - rows), (0, 0)))).T
    check_close(read_f32(dst, (T, stride)), want, bound, "dst += 0.5 W x")
    with pytest.raises(BackendError, match="matmul .*rows 90..120 outside 0..101"):
        kernels.matmul(dst, w, xb, T, row_offset=90, n_rows=30)
    assert_no_gl_error(glctx)


@pytest.mark.parametrize("x_ubo_bytes", [65536, 4096, 0], ids=["ubo", "ubo-4k", "ssbo"])
def test_matmul_split_dispatches_buffers_and_x_paths(glctx, x_ubo_bytes):  # noqa: F811
    """Tiny limits: the tensor spans several SSBOs, every dispatch holds a few tiles, x comes
    from small uniform blocks (smaller token tiles) or from the SSBO; results must not change."""
    qtype, rows, cols, T = GGMLType.Q8_0, 300, 256, 45
    small = GLContext(glctx.ctx, max_ssbo_bytes=20000)
    k = Kernels(small, max_macs_per_dispatch=128 * 16 * cols)
    k.matvecs.x_ubo_bytes = x_ubo_bytes  # the context's real limit is 64 KiB; pretend it is smaller
    rng = np.random.default_rng(9)
    raw = random_weight(qtype, rows, cols, rng)
    w = upload_weight(small, raw, qtype, rows, cols)
    assert len(w.parts) > 1
    x = rng.standard_normal((T, cols)).astype(np.float32)
    dst = f32_buffer(glctx, T * rows)
    timer = DispatchTimer(k)
    k.matvec(dst, w, f32_buffer(glctx, x), n_tokens=T)  # routed to matmul
    assert timer.dispatches >= 2 * len(w.parts)
    tokens, n_rows = k.dispatch_shape(w, T)
    assert tokens * n_rows * cols <= k.matvecs.max_macs_per_dispatch
    W = dequantize(raw, qtype, rows, cols)
    check_close(read_f32(dst, (T, rows)), x @ W.T, np.abs(x) @ np.abs(W).T, f"split matmul x_ubo={x_ubo_bytes}")
    assert_no_gl_error(glctx)


def test_matmul_reads_x_and_writes_dst_as_buffer_ranges(glctx, kernels):  # noqa: F811
    """The forward pass hands a segment's rows as BufferSlices: x then binds as a uniform block
    from the slice's offset, not from the start of its buffer."""
    qtype, rows, cols, T = GGMLType.Q4_1, 64, 128, 9
    rng = np.random.default_rng(2)
    raw = random_weight(qtype, rows, cols, rng)
    w = upload_weight(glctx, raw, qtype, rows, cols)
    x = rng.standard_normal((T + 4, cols)).astype(np.float32)  # the slice is rows 4.. of x
    xbuf, dst = f32_buffer(glctx, x), f32_buffer(glctx, (T + 4) * rows)
    kernels.matmul(BufferSlice(dst, 4 * rows * 4, T * rows * 4), w, BufferSlice(xbuf, 4 * cols * 4, T * cols * 4), T)
    W = dequantize(raw, qtype, rows, cols)
    got = read_f32(dst, (T + 4, rows))
    check_close(got[4:], x[4:] @ W.T, np.abs(x[4:]) @ np.abs(W).T, "matmul on buffer ranges")
    assert not got[:4].any()
    assert_no_gl_error(glctx)
