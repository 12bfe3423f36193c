"""matvec.comp and embedding.comp against their NumPy twins, for every GGML type.

Tolerance: the kernel decodes exactly the same weights as the twin and sums in f32 with a different
order, so the error is f32 round-off of a length-cols dot product: |err| <= 2e-5 * sum|w*x| + 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

from perro_pastor import cpu, quant
from perro_pastor.errors import BackendError
from perro_pastor.gl.buffers import f32_buffer, i32_buffer, read_f32, rows_per_part, upload_weight
from perro_pastor.gl.context import GLContext, assert_no_gl_error
from perro_pastor.gl.kernels import Kernels
from perro_pastor.gl_figures import DispatchTimer
from perro_pastor.quant import TYPE_INFO, GGMLType

from gl_helpers import ALL_TYPES, check_close, dequantize, glctx, kernels, random_weight  # noqa: F401


def cols_for(qtype: GGMLType) -> int:
    # an odd number of blocks per row, so block offsets hit every byte alignment
    return 3 * TYPE_INFO[qtype].block_size if TYPE_INFO[qtype].block_size > 1 else 3 * 8 * 5


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,n_tokens", [(37, 1), (64, 3)])
def test_matvec_every_type(glctx, kernels, qtype, rows, n_tokens):  # noqa: F811
    rng = np.random.default_rng([int(qtype), rows, n_tokens])
    cols = cols_for(qtype)
    raw = random_weight(qtype, rows, cols, rng)
    w = upload_weight(glctx, raw, qtype, rows, cols)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    dst = f32_buffer(glctx, n_tokens * rows)
    kernels.matvec(dst, w, f32_buffer(glctx, x), n_tokens=n_tokens)
    W = dequantize(raw, qtype, rows, cols)
    want = quant.matmul(x.astype(np.float64), raw, qtype, rows, cols)  # the twin
    check_close(read_f32(dst, (n_tokens, rows)), want, np.abs(x) @ np.abs(W).T, f"matvec {qtype.name}")
    assert_no_gl_error(glctx)


REPACKABLE = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0]


@pytest.mark.parametrize("qtype", REPACKABLE, ids=lambda t: t.name)
@pytest.mark.parametrize("repack", [False, True], ids=["raw", "repacked"])
def test_matvec_both_layouts(glctx, kernels, qtype, repack):  # noqa: F811
    """The types repacked by default also run from the file's raw bytes; both match the twin.

    5 blocks per row and 13 rows: groups of 4 blocks straddle rows and the last one is padded.
    """
    rng = np.random.default_rng([int(qtype), repack])
    rows, cols, T = 13, 5 * 32, 2
    raw = random_weight(qtype, rows, cols, rng)
    w = upload_weight(glctx, raw, qtype, rows, cols, repack=repack)
    assert w.repacked == repack
    x = rng.standard_normal((T, cols)).astype(np.float32)
    dst = f32_buffer(glctx, T * rows)
    kernels.matvec(dst, w, f32_buffer(glctx, x), n_tokens=T)
    W = dequantize(raw, qtype, rows, cols)
    want = quant.matmul(x.astype(np.float64), raw, qtype, rows, cols)
    check_close(read_f32(dst, (T, rows)), want, np.abs(x) @ np.abs(W).T, f"matvec {qtype.name} repack={repack}")
    # the embedding lookup decodes the same buffer weight by weight: exact in both layouts
    ids = np.array([12, 0, 7], np.int32)
    out = f32_buffer(glctx, 3 * cols)
    kernels.embedding(out, w, i32_buffer(glctx, ids), n_tokens=3)
    np.testing.assert_array_equal(read_f32(out, (3, cols)), cpu.embedding(raw.reshape(-1), qtype, rows, cols, ids))
    assert_no_gl_error(glctx)


def test_repack_blocks_layout():
    """Group layout by hand for Q4_1: [4 scale words][4 x 16 quant bytes], zero padding at the end."""
    from perro_pastor.gl.buffers import repack_blocks, repacked_nbytes

    rng = np.random.default_rng(11)
    blocks = rng.integers(0, 256, size=(5, 20), dtype=np.uint8)
    words = repack_blocks(blocks, GGMLType.Q4_1)
    assert words.nbytes == repacked_nbytes(GGMLType.Q4_1, 5) == 2 * 80
    g = words.view(np.uint8).reshape(2, 80)
    np.testing.assert_array_equal(g[0, :16].reshape(4, 4), blocks[:4, :4])
    np.testing.assert_array_equal(g[0, 16:].reshape(4, 16), blocks[:4, 4:])
    np.testing.assert_array_equal(g[1, :4], blocks[4, :4])
    np.testing.assert_array_equal(g[1, 16:32], blocks[4, 4:])
    assert not g[1, 4:16].any() and not g[1, 32:].any()
    q8 = rng.integers(0, 256, size=(4, 34), dtype=np.uint8)
    g8 = repack_blocks(q8, GGMLType.Q8_0).view(np.uint8)
    np.testing.assert_array_equal(g8[:16].reshape(4, 4)[:, :2], q8[:, :2])  # d, zero-extended
    assert not g8[:16].reshape(4, 4)[:, 2:].any()
    np.testing.assert_array_equal(g8[16:].reshape(4, 32), q8[:, 2:])


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q6_K], ids=lambda t: t.name)
def test_matvec_accumulate_and_row_range(glctx, kernels, qtype):  # noqa: F811
    rng = np.random.default_rng(7)
    rows, cols, T = 101, 2 * TYPE_INFO[qtype].block_size, 2
    raw = random_weight(qtype, rows, cols, rng)
    w = upload_weight(glctx, raw, qtype, rows, cols)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    base = rng.standard_normal((T, rows)).astype(np.float32)
    dst = f32_buffer(glctx, base)
    # two calls over a split row range, as a caller spreading one mat-vec over two frames would
    kernels.matvec(dst, w, f32_buffer(glctx, x), n_tokens=T, accumulate=True, row_offset=0, n_rows=50)
    kernels.matvec(dst, w, f32_buffer(glctx, x), n_tokens=T, accumulate=True, row_offset=50, n_rows=51)
    W = dequantize(raw, qtype, rows, cols)
    check_close(read_f32(dst, (T, rows)), base + x @ W.T, np.abs(base) + np.abs(x) @ np.abs(W).T, "dst += W x")
    with pytest.raises(BackendError, match="rows 90..120 outside 0..101"):
        kernels.matvec(dst, w, f32_buffer(glctx, x), row_offset=90, n_rows=30)
    assert_no_gl_error(glctx)


@pytest.mark.parametrize("repack,part_rows", [(False, [73] * 4 + [8]), (True, [68] * 4 + [28])])
def test_weight_split_across_buffers_and_dispatches(glctx, repack, part_rows):  # noqa: F811
    """A tiny SSBO limit splits the tensor by whole rows; results must not change."""
    qtype, rows, cols = GGMLType.Q8_0, 300, 64  # 68-byte rows: parts start at odd word offsets
    small = GLContext(glctx.ctx, max_ssbo_bytes=5000)
    k = Kernels(small, max_weights_per_dispatch=32 * cols, matvec_rows_per_invocation=2)
    rng = np.random.default_rng(3)
    raw = random_weight(qtype, rows, cols, rng)
    w = upload_weight(small, raw, qtype, rows, cols, repack=repack)
    assert w.repacked == repack
    # raw: 68-byte rows; repacked: groups of 4 blocks (144 bytes), 34 per part = 136 blocks = 68 rows
    assert [p.n_rows for p in w.parts] == part_rows
    assert all(p.buffer.size <= 5000 for p in w.parts)
    assert rows_per_part(68, 5000) == 73
    x = rng.standard_normal((1, cols)).astype(np.float32)
    dst = f32_buffer(glctx, rows)
    timer = DispatchTimer(k)
    k.matvec(dst, w, f32_buffer(glctx, x))
    assert timer.dispatches > len(w.parts)  # also split by max_weights_per_dispatch
    W = dequantize(raw, qtype, rows, cols)
    check_close(read_f32(dst, (1, rows)), x @ W.T, np.abs(x) @ np.abs(W).T, "split matvec")
    assert_no_gl_error(glctx)


@pytest.mark.parametrize("repack", [False, True], ids=["raw", "repacked"])
def test_embedding_split_across_buffers(glctx, repack):  # noqa: F811
    """A table split by rows (a 7B model's F16 embedding is above llvmpipe's 128 MiB SSBO limit;
    CPU renderers split every weight into 2 MB parts): one dispatch per part, each writing only
    the tokens whose row it holds. Ids in every part, repeated, and at both ends."""
    qtype, vocab, dim = GGMLType.Q8_0, 300, 64
    small = GLContext(glctx.ctx, max_ssbo_bytes=5000)
    k = Kernels(small)
    raw = random_weight(qtype, vocab, dim, np.random.default_rng(11))
    w = upload_weight(small, raw, qtype, vocab, dim, repack=repack)
    assert len(w.parts) == 5
    ids = np.array([7, 299, 0, 150, 72, 73, 299, 204, 150], np.int32)
    out = f32_buffer(glctx, len(ids) * dim)
    timer = DispatchTimer(k)
    k.embedding(out, w, i32_buffer(glctx, ids), n_tokens=len(ids))
    assert timer.dispatches == len(w.parts)
    want = cpu.embedding(raw.reshape(-1), qtype, vocab, dim, ids)
    np.testing.assert_array_equal(read_f32(out, (len(ids), dim)), want)
    assert_no_gl_error(glctx)


def test_upload_rejects_wrong_size(glctx):  # noqa: F811
    with pytest.raises(BackendError, match=r"tensor blk\.0\.attn_q: Q4_1 4x64 needs 160 bytes, got 150"):
        upload_weight(glctx, np.zeros(150, np.uint8), GGMLType.Q4_1, 4, 64, name="blk.0.attn_q")


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_embedding_every_type(glctx, kernels, qtype):  # noqa: F811
    rng = np.random.default_rng(int(qtype) + 100)
    vocab, dim = 29, cols_for(qtype)
    raw = random_weight(qtype, vocab, dim, rng)
    w = upload_weight(glctx, raw, qtype, vocab, dim)
    ids = np.array([0, 28, 5, 5, 17], np.int32)
    out = f32_buffer(glctx, 4 * dim)
    # token_offset=1: read ids 1..4 of the buffer, as a decode step reads the last sampled id
    kernels.embedding(out, w, i32_buffer(glctx, ids), n_tokens=4, token_offset=1)
    want = cpu.embedding(raw.reshape(-1), qtype, vocab, dim, ids[1:])
    np.testing.assert_array_equal(read_f32(out, (4, dim)), want)  # decoding is exact
    assert_no_gl_error(glctx)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q6_K, GGMLType.F16],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("accumulate", [False, True], ids=["store", "residual"])
@pytest.mark.parametrize("ax_in", ["storage", "uniform"])
def test_fused_lora_matvec(glctx, qtype, accumulate, ax_in):  # noqa: F811
    """dst (+)= W x + scale * B (A x) in one mat-vec (decode): against float64, on rows split
    across buffers and dispatches (B is indexed by the weight's row, not the part's). A x comes
    from a storage buffer, or from a uniform block at an offset (the stacked-A layout)."""
    from perro_pastor.gl.lora_factors import LORA_AX_UBO_BYTES, FusedLora, LoraPair, rows_int8

    rng = np.random.default_rng(int(qtype) + 7)
    rows, cols, rank, scale = 150, cols_for(qtype) * 2, 5, 0.6
    part_bytes = rows // 3 * quant.row_nbytes(qtype, cols) + 8  # about 3 buffer parts
    small = GLContext(glctx.ctx, max_ssbo_bytes=part_bytes)
    k = Kernels(small, max_weights_per_dispatch=40 * cols, matvec_rows_per_invocation=2)
    raw = random_weight(qtype, rows, cols, rng)
    w = upload_weight(small, raw, qtype, rows, cols)
    assert len(w.parts) > 1
    a = rng.standard_normal((rank, cols)).astype(np.float32)
    b = rng.standard_normal((rows, rank)).astype(np.float32)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    y0 = rng.standard_normal((1, rows)).astype(np.float32)
    y, xb = f32_buffer(glctx, y0), f32_buffer(glctx, x)
    pair = LoraPair(glctx, a, b)
    ax, ax_offset = k.lora_ax(pair, xb), 0
    if ax_in == "uniform":
        ax_offset = 8  # floats: A x of another projection comes first
        block = glctx.ctx.buffer(reserve=LORA_AX_UBO_BYTES)
        block.write(ax.read(pair.a.rows * 4), offset=ax_offset * 4)
        ax = block
    k.matvec(y, w, xb, accumulate=accumulate, lora=FusedLora(pair, ax, scale, ax_offset))
    W = dequantize(raw, qtype, rows, cols)
    # the epilogue reads B as int8 per row (rows_int8): within half a step of B, step = max|row| / 127
    words = rows_int8(np.pad(b, ((0, 0), (0, pair.a.rows - rank))))
    top = words[:, 0].view(np.float32)
    b_held = (top[:, None] / 127) * words[:, 1:].copy().view(np.int8)[:, :rank].astype(np.float64)
    assert np.all(np.abs(b_held - b) <= top[:, None] / 254 * (1 + 1e-6))
    want = (y0 if accumulate else 0) + x.astype(np.float64) @ W.T + scale * (x.astype(np.float64) @ a.T @ b_held.T)
    bound = np.abs(y0) + np.abs(x) @ np.abs(W).T + scale * (np.abs(x) @ np.abs(a).T @ np.abs(b_held).T)
    check_close(read_f32(y, (1, rows)), want, bound, "fused lora matvec")
    with pytest.raises(BackendError, match="one token"):
        k.matvec(y, w, xb, n_tokens=2, lora=FusedLora(pair, k.lora_ax(pair, xb), scale))
    pair.release()
    assert_no_gl_error(glctx)


@pytest.mark.parametrize("rank,T", [(4, 1), (16, 3)])
def test_lora_delta(glctx, kernels, rank, T):  # noqa: F811
    from perro_pastor.gl.lora_factors import LoraPair

    rng = np.random.default_rng(rank)
    rows, cols, scale = 72, 96, 0.37
    a = rng.standard_normal((rank, cols)).astype(np.float32)
    b = rng.standard_normal((rows, rank)).astype(np.float32)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    y0 = rng.standard_normal((T, rows)).astype(np.float32)
    y = f32_buffer(glctx, y0)
    kernels.lora(y, LoraPair(glctx, a, b), f32_buffer(glctx, x), scale=scale, n_tokens=T)
    want = y0 + scale * (x.astype(np.float64) @ a.T @ b.T)
    bound = np.abs(y0) + scale * (np.abs(x) @ np.abs(a).T @ np.abs(b).T)
    check_close(read_f32(y, (T, rows)), want, bound, "lora")
    with pytest.raises(BackendError, match="ranks differ"):
        LoraPair(glctx, a, b[:, :-1])
    assert_no_gl_error(glctx)
