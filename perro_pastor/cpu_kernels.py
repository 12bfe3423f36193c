"""Compiled kernels for the cpu backend (numba), over the row tiles of ``packed_weights.py``.

Each kernel is plain Python that numba compiles to machine code once and caches in the user's
cache folder. They release the GIL (``nogil``), so a game's frame thread keeps running while a
step computes, and spread row tiles over the cores (``prange``).

Why the tiles: a tile holds ``R`` rows side by side, ``[tile, group, j, row]``, so the innermost
loop walks ``row`` over contiguous bytes and LLVM turns it into SIMD across rows, reading the
4-bit or 8-bit weights directly (no float32 copy of the model). Loops over one row's 32-weight
groups vectorize badly. Activations are float (exact up to float32 rounding), except that in
decode passes 4-bit weights take them rounded to 9 bits, as llama.cpp does with 8
(``matvec_nibbles_int``, int16 lanes, faster; measurements in docs/cpu_backend.md;
benchmarks/bench_cpu_kernels.py re-checks kernel speed).

The NumPy twins are ``packed_weights.PackedMatrix.dequantize`` followed by a product in float64.
"""

from __future__ import annotations

import numpy as np

from .cpu_attention import attention, exp_nonpositive  # (attention: one of the few-token ops cpu.py reads here)
from .cpu_compile import PARALLEL, SERIAL, njit, prange, prefetch_group, scale_16_rows
from .cpu_vnni import group_absmax, matvec_bytes_vnni, matvec_nibbles_vnni, round_activations_to_int8


# Each group's float32 scale and offset for the R rows of a tile sit together in one array,
# scales: (n_tiles, n_groups, 2, R), float32, or float16 (as uint16 bits) in 8-bit tiles and
# VNNI tiles where the file's scales are float16 (packed_weights.narrow_scales): those kernels
# widen them with one vector instruction (cpu_compile.scale_16_rows; LLVM's own loop stayed
# scalar, which made float16 scales slower than float32 before it).

# -----------------------------------------------------------------------------
# 4-bit weights: byte j of a 32-weight group holds weight j (low nibble) and weight j + 16
# (high nibble). The high nibble is read as (q & 0xF0) against x / 16: exact, and cheaper than
# a shift. numba types integer arithmetic as int64; the int32 casts below let LLVM convert
# 8 lanes at a time through 32-bit integers (measured 1.65x faster than through int64).

@njit(**PARALLEL)
def matvec_nibbles(data, scales, x, out):
    """out[t, r] = sum_k W[r, k] x[t, k] with W[r, k] = scale * q + offset per 32-weight group.

    data: (n_tiles, n_groups, 16, R) uint8; scales: (n_tiles, n_groups, 2, R) float32;
    x: (T, n_groups * 32) float32; out: (T, n_tiles * R) float32."""
    n_tiles, n_groups, half, R = data.shape
    T = x.shape[0]
    xs = x.reshape(T, n_groups, 2, half)
    x_low = xs[:, :, 0, :].copy()
    x_high = xs[:, :, 1, :] * np.float32(1 / 16)
    x_sum = xs.sum(axis=3).sum(axis=2).astype(np.float32)
    for tile in prange(n_tiles):
        acc = np.empty((T, R), np.float32)
        part = np.empty(R, np.float32)
        acc[:] = 0
        tile_bytes, tile_scales = data[tile], scales[tile]
        for g in range(n_groups):
            so = scales[tile, g]
            prefetch_group(tile_bytes, tile_scales, g)
            for t in range(T):
                part[:] = 0
                for j in range(half):
                    xl = x_low[t, g, j]
                    xh = x_high[t, g, j]
                    for r in range(R):
                        q = data[tile, g, j, r]
                        part[r] += np.float32(np.int32(q & np.uint8(0x0F))) * xl + np.float32(np.int32(q & np.uint8(0xF0))) * xh
                s = x_sum[t, g]
                for r in range(R):
                    acc[t, r] += so[0, r] * part[r] + so[1, r] * s
        out[:, tile * R:(tile + 1) * R] = acc


# The same product on activations rounded to 9 bits (llama.cpp rounds to 8: its Q8 blocks):
# q_x = rint(x * 255 / max|x|) per 32, d = max|x| / 255, s = d sum(q_x). Then sum_j (scale q_j +
# offset) x_j ~= scale d sum_j (q_j - 8) q_x,j + (offset + 8 scale) s, summed in int16 lanes:
# 16 products of a centred weight (|q - 8| <= 8) and a 9-bit q_x stay below 2^15. The loop adds
# q q_x to a sum that starts at -8 sum(q_x) (c, per half group), so the centring costs nothing;
# the sum may wrap around 2^16 on the way but ends in range: exact. 1.3-1.4x the float kernel;
# logits move half as much as with llama.cpp's 8 bits (docs/cpu_backend.md).
ACTIVATION_LEVELS = 255


@njit(**SERIAL)
def round_activation_groups(x):
    """x: (T, n_groups * 32) float32 -> (q (T, n_groups, 32) int16 within +-ACTIVATION_LEVELS,
    d (T, n_groups), s (T, n_groups), c (T, n_groups, 2) int16) with x ~= q * d, s = d * sum(q)
    per group, and c = -8 * sum(q) over each half group."""
    T, cols = x.shape
    n_groups = cols // 32
    levels = np.float32(ACTIVATION_LEVELS)
    q = np.empty((T, n_groups, 32), np.int16)
    d = np.empty((T, n_groups), np.float32)
    s = np.empty((T, n_groups), np.float32)
    c = np.empty((T, n_groups, 2), np.int16)
    for t in range(T):
        for g in range(n_groups):
            amax = group_absmax(x, t, g)  # (NaN where the group holds NaN or inf)
            inv = levels / amax if amax > 0 else np.float32(0)
            total = low_total = 0
            for j in range(32):
                v = np.int32(np.rint(x[t, g * 32 + j] * inv))
                q[t, g, j] = v
                total += v
                if j == 15:
                    low_total = total
            c[t, g, 0] = -8 * low_total  # (at most 8 * 16 * 255 in size: fits int16)
            c[t, g, 1] = -8 * (total - low_total)
            d[t, g] = amax / levels
            s[t, g] = d[t, g] * np.float32(total)
    return q, d, s, c


@njit(**PARALLEL)
def matvec_nibbles_int(data, scales, xq, xd, xs, xc, out):
    """``matvec_nibbles`` over activations from ``round_activation_groups``: out (T, n_tiles * R)."""
    n_tiles, n_groups, half, R = data.shape
    T = xq.shape[0]
    eight = np.float32(8)
    for tile in prange(n_tiles):
        acc = np.zeros((T, R), np.float32)
        low = np.empty(R, np.int16)
        high = np.empty(R, np.int16)
        tile_bytes, tile_scales = data[tile], scales[tile]
        for g in range(n_groups):
            so = scales[tile, g]
            prefetch_group(tile_bytes, tile_scales, g)
            for t in range(T):
                low[:] = xc[t, g, 0]
                high[:] = xc[t, g, 1]
                for j in range(half):
                    a = xq[t, g, j]
                    b = xq[t, g, j + half]
                    for r in range(R):
                        q = data[tile, g, j, r]
                        low[r] += np.int16(q & np.uint8(0x0F)) * a
                        high[r] += np.int16(q >> np.uint8(4)) * b
                d, s = xd[t, g], xs[t, g]
                s8 = eight * s
                for r in range(R):
                    acc[t, r] += so[0, r] * (d * np.float32(np.int32(low[r]) + np.int32(high[r])) + s8) \
                        + so[1, r] * s
        out[:, tile * R:(tile + 1) * R] = acc


@njit(**PARALLEL)
def dequantize_nibbles(data, scales, tile0, out):
    """Rows of tiles tile0.. as float32 into out: (n_rows, n_groups * 32), n_rows a multiple of R.
    Each group is decoded across rows (contiguous reads), then written row by row (32 floats)."""
    n_tiles, n_groups, half, R = data.shape
    for tile in prange(out.shape[0] // R):
        src = tile0 + tile
        w = np.empty((2 * half, R), np.float32)
        for g in range(n_groups):
            so = scales[src, g]
            for j in range(half):
                for r in range(R):
                    q = data[src, g, j, r]
                    w[j, r] = so[0, r] * np.float32(np.int32(q & np.uint8(0x0F))) + so[1, r]
                    w[half + j, r] = so[0, r] * np.float32(np.int32(q >> np.uint8(4))) + so[1, r]
            out[tile * R:(tile + 1) * R, g * 2 * half:(g + 1) * 2 * half] = w.T


# -----------------------------------------------------------------------------
# 8-bit weights: one signed byte per weight, groups of 16 or 32

@njit(**PARALLEL)
def matvec_bytes(data, scales, x, out):
    """As ``matvec_nibbles`` for data: (n_tiles, n_groups, G, R) int8, one weight per byte;
    scales float32 or float16 bits (uint16, ``packed_weights.narrow_scales``); R a multiple of 16."""
    n_tiles, n_groups, G, R = data.shape
    T = x.shape[0]
    xs = x.reshape(T, n_groups, G)
    x_sum = xs.sum(axis=2).astype(np.float32)
    for tile in prange(n_tiles):
        acc = np.empty((T, R), np.float32)
        part = np.empty(R, np.float32)
        acc[:] = 0
        tile_bytes, tile_scales = data[tile], scales[tile]
        for g in range(n_groups):
            so = scales[tile, g]
            prefetch_group(tile_bytes, tile_scales, g)
            for t in range(T):
                part[:] = 0
                for j in range(G):
                    xj = xs[t, g, j]
                    for r in range(R):
                        part[r] += np.float32(np.int32(data[tile, g, j, r])) * xj
                for first in range(0, R, 16):  # acc += scale * part + offset * sum(x)
                    scale_16_rows(acc[t], first, part[first:first + 16], so[0], so[1], np.float32(1), x_sum[t, g])
        out[:, tile * R:(tile + 1) * R] = acc


@njit(**PARALLEL)
def dequantize_bytes(data, scales, tile0, out):
    """As ``dequantize_nibbles`` for 8-bit tiles."""
    n_tiles, n_groups, G, R = data.shape
    for tile in prange(out.shape[0] // R):
        src = tile0 + tile
        w = np.empty((G, R), np.float32)
        for g in range(n_groups):
            so = scales[src, g]
            for j in range(G):
                for r in range(R):
                    w[j, r] = so[0, r] * np.float32(np.int32(data[src, g, j, r])) + so[1, r]
            out[tile * R:(tile + 1) * R, g * G:(g + 1) * G] = w.T


# -----------------------------------------------------------------------------
# the rest of a decode step, for a few tokens at a time (each the twin of the NumPy op of the
# same name in cpu.py; called there instead of it when a pass has few tokens, where NumPy's
# per-call cost, not arithmetic, dominates)

@njit(**SERIAL)
def rmsnorm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis of (T, dim)."""
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        mean_square = np.float32(0)
        for i in range(x.shape[1]):
            mean_square += x[t, i] * x[t, i]
        inv = np.float32(1) / np.sqrt(mean_square / x.shape[1] + np.float32(eps))
        for i in range(x.shape[1]):
            out[t, i] = x[t, i] * inv * weight[i]
    return out


@njit(**SERIAL)
def apply_rope(x, rotation):
    """Rotate pairs (x[2i], x[2i+1]) of each head by the complex rotation[t, i]; x: (T, heads, hs)."""
    out = x.copy()
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            for i in range(rotation.shape[1]):
                c, s = rotation[t, i].real, rotation[t, i].imag
                a, b = x[t, h, 2 * i], x[t, h, 2 * i + 1]
                out[t, h, 2 * i] = a * c - b * s
                out[t, h, 2 * i + 1] = a * s + b * c
    return out


@njit(**SERIAL)
def swiglu(h1, h3):
    """silu(h1) * h3 for (T, hidden) arrays, with silu(x) = x * sigmoid(x). sigmoid(x) is
    1 / (1 + e) for x >= 0 and e / (1 + e) below, with e = exp(-|x|) <= 1, the vectorized
    exponential of cpu_attention (NumPy's is a libm call per value): 3.2 -> 1.6 us a layer of
    the default model. Two loops, because LLVM left the one-loop form scalar."""
    out = np.empty(h1.shape, np.float32)
    for t in range(h1.shape[0]):
        gate, up, row = h1[t], h3[t], out[t]
        for i in range(row.shape[0]):
            row[i] = exp_nonpositive(-abs(gate[i]))
        for i in range(row.shape[0]):
            x, e = gate[i], row[i]
            row[i] = x * ((np.float32(1) if x >= 0 else e) / (np.float32(1) + e)) * up[i]
    return out


# -----------------------------------------------------------------------------
# a whole layer for one decoding token

BYTES, NIBBLES, VNNI_NIBBLES, VNNI_BYTES = 0, 1, 2, 3  # the tile formats, as PackedMatrix.kernel_args names them


@njit(nogil=True, cache=True)
def _matvec(matrix, x, out, rounded):
    """The mat-vec of a packed matrix given as (data, scales, kind) (``PackedMatrix.kernel_args``);
    ``rounded``: 4-bit weights take activations rounded to 9 bits (``matvec_nibbles_int``); tiles
    in VNNI order (kinds VNNI_NIBBLES, VNNI_BYTES) only run on activations rounded to 8."""
    data, scales, kind = matrix
    nibbles = kind == NIBBLES
    if kind == VNNI_NIBBLES:
        xq, xd, xs = round_activations_to_int8(x)
        matvec_nibbles_vnni(data, scales, xq, xd, xs, out)
    elif kind == VNNI_BYTES:
        xq, xd, _ = round_activations_to_int8(x)
        matvec_bytes_vnni(data, scales, xq, xd, out)
    elif nibbles and rounded:
        xq, xd, xs, xc = round_activation_groups(x)
        matvec_nibbles_int(data, scales, xq, xd, xs, xc, out)
    elif nibbles:
        matvec_nibbles(data, scales, x, out)
    else:
        matvec_bytes(data, scales, x, out)


# For a lone decoding token, a layer runs as two calls: the attention half and the feed-forward
# half, each the compiled twin of those lines of cpu.py's narrated pass (between separate calls,
# Python's ~100 us a layer left the memory bus idle). Matrices: PackedMatrix.kernel_args.

@njit(nogil=True, cache=True)
def decode_attention(x, att_norm, eps, wqkv, wo, rotation, k_cache, v_cache, pos,
                     n_heads, n_kv_heads, sliding_window, rounded):
    """x += wo(attention(rope(q), rope(k), v)) for x: (1, dim), in place. wqkv: the stacked
    rows of wq, wk, wv; k_cache, v_cache: this layer's (n_kv_heads, n_ctx, hs)."""
    dim = x.shape[1]
    hs = dim // n_heads
    kv_dim = n_kv_heads * hs
    R = wqkv[0].shape[3]

    # attention: pre-norm, q k v in one product, RoPE, remember k v, attend, mix the heads back
    xb = rmsnorm(x, att_norm, eps)
    qkv = np.empty((1, wqkv[0].shape[0] * R), np.float32)
    _matvec(wqkv, xb, qkv, rounded)
    q = apply_rope(qkv[:, :dim].copy().reshape(1, n_heads, hs), rotation)
    k = apply_rope(qkv[:, dim:dim + kv_dim].copy().reshape(1, n_kv_heads, hs), rotation)
    k_cache[:, pos] = k[0]
    v_cache[:, pos] = qkv[0, dim + kv_dim:dim + 2 * kv_dim].reshape(n_kv_heads, hs)
    att = attention(q, k_cache, v_cache, pos, sliding_window)
    att_out = np.empty((1, wo[0].shape[0] * R), np.float32)
    _matvec(wo, att.reshape(1, dim), att_out, rounded)
    x += att_out[:, :dim]
    return x


@njit(nogil=True, cache=True)
def decode_ffn(x, ffn_norm, eps, w13, w2, hidden, rounded):
    """The feed-forward half of a layer for a lone decoding token: pre-norm, w1 and w3 in one
    product, SwiGLU, w2, residual. x: (1, dim), updated in place."""
    dim = x.shape[1]
    R = w13[0].shape[3]
    xb = rmsnorm(x, ffn_norm, eps)
    gate_up = np.empty((1, w13[0].shape[0] * R), np.float32)
    _matvec(w13, xb, gate_up, rounded)
    hb = swiglu(gate_up[:, :hidden], gate_up[:, hidden:2 * hidden])
    ffn_out = np.empty((1, w2[0].shape[0] * R), np.float32)
    _matvec(w2, hb, ffn_out, rounded)
    x += ffn_out[:, :dim]
    return x
