"""rmsnorm, swiglu, add, rope (+ KV cache store) and attention against the cpu twins.

Tolerances (f32 kernels vs float64 twins):
  rmsnorm, swiglu, add: 1e-5 relative (a few f32 roundings per element, one f32 sum over dim)
  rope: 2e-6 * |x| + position-dependent term: the angle pos * inv_freq is rounded to f32,
        an absolute angle error of ~6e-8 * pos, so 1e-7 * pos * |x| on top
  attention: 2e-5 absolute on O(1) outputs (f32 dot products of length hs, softmax over <= 200)
  f16 cache: the twin reads the same f16-rounded cache, so the same tolerance applies
"""

from __future__ import annotations

import numpy as np
import pytest

from perro_pastor import cpu
from perro_pastor.gl.buffers import f32_buffer, i32_buffer, read_f32
from perro_pastor.gl.context import assert_no_gl_error

from gl_helpers import glctx, kernels  # noqa: F401


@pytest.mark.parametrize("dim,T", [(576, 1), (5120, 2), (8192, 1), (37, 3)])
def test_rmsnorm(glctx, kernels, dim, T):  # noqa: F811
    rng = np.random.default_rng(dim + T)
    x = (rng.standard_normal((T, dim)) * 3).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    out = f32_buffer(glctx, T * dim)
    kernels.rmsnorm(out, f32_buffer(glctx, x), f32_buffer(glctx, w), dim=dim, eps=1e-5, n_tokens=T)
    want = cpu.rmsnorm(x.astype(np.float64), w.astype(np.float64), 1e-5)
    np.testing.assert_allclose(read_f32(out, (T, dim)), want, rtol=1e-5, atol=1e-6)
    assert_no_gl_error(glctx)


@pytest.mark.parametrize("n", [1, 1536, 1001])
def test_swiglu_and_add(glctx, kernels, n):  # noqa: F811
    rng = np.random.default_rng(n)
    h1, h3 = (rng.standard_normal((2, n)) * 4).astype(np.float32)
    out = f32_buffer(glctx, n)
    kernels.swiglu(out, f32_buffer(glctx, h1), f32_buffer(glctx, h3), n=n)
    want = cpu.swiglu(h1.astype(np.float64), h3.astype(np.float64))
    np.testing.assert_allclose(read_f32(out, (n,)), want, rtol=1e-5, atol=1e-6)
    kernels.add(out, f32_buffer(glctx, h1), n=n)
    np.testing.assert_allclose(read_f32(out, (n,)), want + h1, rtol=1e-5, atol=1e-5)
    assert_no_gl_error(glctx)


def inv_freq_table(head_size: int, base: float, n_rot: int | None = None) -> np.ndarray:
    n_rot = head_size // 2 if n_rot is None else n_rot
    return (1.0 / base ** (np.arange(n_rot) * 2 / head_size)).astype(np.float32)


def check_rope(got, want, x, positions, what):
    tol = 2e-6 * np.abs(x).max() + 1e-7 * positions.max() * np.abs(x).max()
    err = np.abs(got - want).max()
    assert err <= tol, f"{what}: max |err| {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("kv_f16", [False, True])
@pytest.mark.parametrize("use_pos_buffer", [False, True])
def test_rope_and_cache_store(glctx, kernels, kv_f16, use_pos_buffer):  # noqa: F811
    rng = np.random.default_rng([kv_f16, use_pos_buffer])
    T, n_heads, n_kv, hs, seq_len = 3, 9, 3, 64, 40
    pos0 = 17
    positions = np.arange(pos0, pos0 + T)
    q = rng.standard_normal((T, n_heads, hs)).astype(np.float32)
    k = rng.standard_normal((T, n_kv, hs)).astype(np.float32)
    v = rng.standard_normal((T, n_kv, hs)).astype(np.float32)
    inv = inv_freq_table(hs, 1e5)
    qb, kb, vb = f32_buffer(glctx, q), f32_buffer(glctx, k), f32_buffer(glctx, v)
    layer_elems = seq_len * n_kv * hs
    # two layers in one buffer; write layer 1
    cache_bytes = 2 * layer_elems * (2 if kv_f16 else 4)
    kc, vc = glctx.ctx.buffer(reserve=cache_bytes), glctx.ctx.buffer(reserve=cache_bytes)
    kernels.rope(qb, kb, f32_buffer(glctx, inv), n_heads=n_heads, n_kv_heads=n_kv, head_size=hs, n_tokens=T,
                 pos0=pos0, positions=i32_buffer(glctx, positions) if use_pos_buffer else None,
                 v=vb, k_cache=kc, v_cache=vc, cache_base=layer_elems, seq_len=seq_len, kv_f16=kv_f16)
    want_q = cpu.rope(q.astype(np.float64), positions, inv.astype(np.float64))
    want_k = cpu.rope(k.astype(np.float64), positions, inv.astype(np.float64))
    check_rope(read_f32(qb, q.shape), want_q, q, positions, "rope q")
    check_rope(read_f32(kb, k.shape), want_k, k, positions, "rope k")
    dt = np.float16 if kv_f16 else np.float32
    kcache = np.frombuffer(kc.read(), dt).reshape(2, seq_len, n_kv, hs).astype(np.float64)
    vcache = np.frombuffer(vc.read(), dt).reshape(2, seq_len, n_kv, hs).astype(np.float64)
    if kv_f16:  # f16 rounding: half an ulp, 2^-11 relative
        np.testing.assert_allclose(kcache[1, pos0:pos0 + T], want_k, rtol=2 ** -11, atol=1e-5)
        np.testing.assert_allclose(vcache[1, pos0:pos0 + T], v, rtol=2 ** -11, atol=1e-7)
    else:
        check_rope(kcache[1, pos0:pos0 + T], want_k, k, positions, "k cache")
        np.testing.assert_array_equal(vcache[1, pos0:pos0 + T], v)
    assert not kcache[0].any() and not kcache[1, :pos0].any()  # nothing else touched
    assert_no_gl_error(glctx)


def test_rope_partial_rotation_and_large_positions(glctx, kernels):  # noqa: F811
    rng = np.random.default_rng(5)
    T, n_heads, n_kv, hs = 2, 4, 2, 128
    positions = np.array([4000, 8191])
    q = rng.standard_normal((T, n_heads, hs)).astype(np.float32)
    k = rng.standard_normal((T, n_kv, hs)).astype(np.float32)
    inv = inv_freq_table(hs, 1e4, n_rot=16)  # rope over the first 32 features only
    qb, kb = f32_buffer(glctx, q), f32_buffer(glctx, k)
    kernels.rope(qb, kb, f32_buffer(glctx, inv), n_heads=n_heads, n_kv_heads=n_kv, head_size=hs, n_rot=16,
                 n_tokens=T, positions=i32_buffer(glctx, positions))
    check_rope(read_f32(qb, q.shape), cpu.rope(q.astype(np.float64), positions, inv.astype(np.float64)),
               q, positions, "rope q")
    check_rope(read_f32(kb, k.shape), cpu.rope(k.astype(np.float64), positions, inv.astype(np.float64)),
               k, positions, "rope k")
    assert_no_gl_error(glctx)


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (9, 3), (8, 1)])
@pytest.mark.parametrize("T,pos0,window", [(1, 0, 0), (1, 130, 0), (5, 30, 0), (4, 70, 16)])
@pytest.mark.parametrize("kv_f16", [False, True])
def test_attention(glctx, kernels, n_heads, n_kv, T, pos0, window, kv_f16):  # noqa: F811
    rng = np.random.default_rng([n_heads, n_kv, T, pos0, window, kv_f16])
    hs, seq_len = 32, 160
    q = rng.standard_normal((T, n_heads, hs)).astype(np.float32)
    dt = np.float16 if kv_f16 else np.float32
    kc = (rng.standard_normal((2, seq_len, n_kv, hs)) * 2).astype(dt)  # layer 1 is read
    vc = rng.standard_normal((2, seq_len, n_kv, hs)).astype(dt)
    out = f32_buffer(glctx, T * n_heads * hs)
    kernels.attention(out, f32_buffer(glctx, q), glctx.ctx.buffer(kc.tobytes()), glctx.ctx.buffer(vc.tobytes()),
                      n_heads=n_heads, n_kv_heads=n_kv, head_size=hs, pos0=pos0, seq_len=seq_len, n_tokens=T,
                      cache_base=seq_len * n_kv * hs, sliding_window=window, kv_f16=kv_f16)
    want = cpu.attention(q.astype(np.float64), kc[1].transpose(1, 0, 2).astype(np.float64),
                         vc[1].transpose(1, 0, 2).astype(np.float64), pos0,
                         sliding_window=window)
    np.testing.assert_allclose(read_f32(out, q.shape), want, atol=2e-5, rtol=0)
    assert_no_gl_error(glctx)


def held_a(arrays, offsets, rows, cols):
    """The stacked A factors as the GPU holds them (``a_rows_int8``: int8 rows, a scale each)."""
    from perro_pastor.gl.lora_factors import a_rows_int8

    stacked = np.zeros((rows, cols), np.float32)
    for a, off in zip(arrays, offsets):
        stacked[off:off + len(a)] = a
    words = a_rows_int8(stacked)
    top = words[:rows].view(np.float32)
    q = words[(rows + 3) // 4 * 4:].copy().view(np.int8).reshape(rows, cols).astype(np.float64)
    held = top[:, None].astype(np.float64) / 127 * q
    assert np.all(np.abs(held - stacked) <= top[:, None] / 254 * (1 + 1e-6))  # half a step at most
    return held


@pytest.mark.parametrize("producer", ["rmsnorm", "swiglu", "attention"])
@pytest.mark.parametrize("ranks", [(5, 16, 3), (64, 9)])
def test_kernels_that_make_x_also_compute_lora_a_x(glctx, kernels, producer, ranks):  # noqa: F811
    """rmsnorm, swiglu and attention with a ``LoraA`` write their usual output, unchanged, and
    A out into the work buffer (common/lora_a.glsl: a partial sum per work group, the last group
    adds them up): against float64 over the A the GPU holds and the output it wrote. Twice in a
    row with new inputs (the counter is back at 0 after each dispatch); ragged chunks, and more
    rows of A than lanes in a group (ranks 64 + 9)."""
    from perro_pastor.gl.lora_factors import LoraA, lora_work
    from perro_pastor.gl.lora_fusion import LoraCache

    rng = np.random.default_rng([len(producer), *ranks])
    cols = {"rmsnorm": 400, "swiglu": 1104, "attention": 9 * 48}[producer]
    arrays = [rng.standard_normal((r, cols)).astype(np.float32) for r in ranks]
    cache = LoraCache(glctx)
    stacked = cache.stacked_a(arrays)
    assert stacked.offsets == {(5, 16, 3): [0, 8, 24], (64, 9): [0, 64]}[ranks]  # padded to 8 rows each
    held = held_a(arrays, stacked.offsets, stacked.rows, cols)
    work = lora_work(kernels.gpu, stacked.rows * 16)
    lora_a = LoraA(stacked.rows_int8, stacked.rows, cols, work)
    out = f32_buffer(glctx, cols)
    for rep in range(2):
        if producer == "rmsnorm":
            x, w = (rng.standard_normal(cols).astype(np.float32) for _ in range(2))
            args = (out, f32_buffer(glctx, x), f32_buffer(glctx, w))
            run = lambda **kw: kernels.rmsnorm(*args, dim=cols, eps=1e-5, **kw)  # noqa: E731
        elif producer == "swiglu":
            h1, h3 = (f32_buffer(glctx, rng.standard_normal(cols).astype(np.float32)) for _ in range(2))
            run = lambda **kw: kernels.swiglu(out, h1, h3, n=cols, **kw)  # noqa: E731
        else:
            hs, n_kv, seq_len = 48, 3, 20
            q = f32_buffer(glctx, rng.standard_normal(cols).astype(np.float32))
            kc, vc = (glctx.ctx.buffer(rng.standard_normal((seq_len, n_kv, hs)).astype(np.float32).tobytes())
                      for _ in range(2))
            run = lambda **kw: kernels.attention(out, q, kc, vc, n_heads=9, n_kv_heads=n_kv,  # noqa: E731
                                                 head_size=hs, pos0=11, seq_len=seq_len, **kw)
        run()
        plain = read_f32(out, (cols,))
        run(lora_a=lora_a)
        got = read_f32(out, (cols,))
        np.testing.assert_array_equal(got, plain)  # the output itself does not change
        ax = read_f32(work, (stacked.rows,))
        want = held @ got.astype(np.float64)
        bound = np.abs(held) @ np.abs(got.astype(np.float64))
        assert np.all(np.abs(ax - want) <= 1e-5 * bound + 1e-7), f"{producer}: A x, repeat {rep}"
        assert np.frombuffer(work.read(4, offset=4096), np.uint32)[0] == 0  # the counter
    cache.release()
    assert_no_gl_error(glctx)
