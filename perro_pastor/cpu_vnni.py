"""The decode mat-vec of 4-bit matrices on CPUs with AVX-512 VNNI (numba, one LLVM intrinsic).

VNNI's ``vpdpbusd`` multiplies 64 unsigned bytes by 64 signed bytes and adds each run of four
products into one of 16 int32 lanes: 64 multiply-adds an instruction. LLVM does not produce it
from our loops (checked: plain ``vpmulld``), so ``dot_16_rows`` emits it through
``numba.extending.intrinsic``. On a CPU without VNNI the same intrinsic emits plain LLVM
multiplies and adds instead, so everything here compiles anywhere, but ``packed_weights`` only
uses this order where ``vnni_available()`` says the instruction exists.

The kernel reads the nibble tiles of ``packed_weights`` (``[tile, group, 16 bytes, 64 rows]``,
byte j of a row = q_j | q_(j+16) << 4) rearranged once at load (``to_vnni_order``): each 64
bytes hold 16 rows x 4 consecutive bytes, the 4 bytes of a row in one lane. The low nibbles of
bytes 4b..4b+3 then meet x[4b..4b+3] and the high nibbles x[16+4b..16+4b+3], each as one
``vpdpbusd`` with those four x broadcast to every lane. Activations are rounded to 8 bits per
32 (``round_activations_to_int8``, d = max|x| / 127), as llama.cpp rounds them; each group's
int32 sums are scaled back in float32 (``scale_16_rows``, from float16 scales where the file's
are float16: Q4_0, Q4_1). Per product this is exact against float64 on the rounded x.
Measured: 2.5x the float kernel's weights per second on a hot cache; in the model, with prefetch,
1.5-1.75x the decode speed of the code before it and prefetch (docs/journal.md).

8-bit tiles (every other integer type) take the same order, with 32 or 16 bytes j a group, and
``matvec_bytes_vnni`` multiplies them: the instruction wants unsigned weights, so they are stored
as q + 128 and each group's sum drops 128 sum(q_x) again (exact). The default model's Q8_0
classifier: 1.4 -> 0.9 ms a token.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu_compile import PARALLEL, SERIAL, njit, prange, prefetch_group, scale_16_rows

ROWS_PER_LANE_BLOCK = 16  # rows one vpdpbusd covers (16 int32 lanes)
_I32x16 = ir.VectorType(ir.IntType(32), 16)
_I8x64 = ir.VectorType(ir.IntType(8), 64)


def cpu_has_vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI, as LLVM (which compiles the kernels) sees it; False
    when numba compiles for another CPU than this one (NUMBA_CPU_NAME, e.g. for portable caches)."""
    import llvmlite.binding as llvm
    import numba
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    features = llvm.get_host_cpu_features()
    return bool(features.get("avx512vnni", False) and features.get("avx512bw", False))


def vnni_available() -> bool:
    """Whether weights should be packed for ``matvec_nibbles_vnni``: the CPU has VNNI and
    ``PERRO_PASTOR_VNNI=0`` does not turn it off."""
    return os.environ.get("PERRO_PASTOR_VNNI", "1") != "0" and cpu_has_vnni()


def _vpdpbusd(builder, acc, unsigned_bytes, signed_bytes):
    """acc (16 x i32) += per lane the sum of its 4 byte products, as one instruction where the
    CPU has it, else as LLVM's generic widen-multiply-add."""
    if cpu_has_vnni():
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32x16, [_I32x16] * 3),
                                            "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [acc, builder.bitcast(unsigned_bytes, _I32x16), signed_bytes])
    wide = ir.VectorType(ir.IntType(32), 64)
    products = builder.mul(builder.zext(unsigned_bytes, wide), builder.sext(builder.bitcast(signed_bytes, _I8x64), wide))
    for k in range(4):
        lane_k = builder.shuffle_vector(products, ir.Constant(wide, ir.Undefined),
                                        ir.Constant(_I32x16, [4 * i + k for i in range(16)]))
        acc = builder.add(acc, lane_k)
    return acc


def _four_in_every_lane(builder, xq_data, x_offset, first):
    """The four int8 activations xq[x_offset + first:...+ 4] as one int32, in all 16 lanes."""
    at = builder.add(x_offset, ir.Constant(x_offset.type, first))
    four = builder.load(builder.bitcast(builder.gep(xq_data, [at]), ir.IntType(32).as_pointer()), align=1)
    one = builder.insert_element(ir.Constant(_I32x16, ir.Undefined), four, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(_I32x16, ir.Undefined), ir.Constant(_I32x16, [0] * 16))


def _dot_16_rows(n_blocks: int, nibbles: bool):
    """An intrinsic ``(block, offset, xq, x_offset, sums)``: sums[0:16] = for 16 rows, the sum
    over one group of weight * xq, from the n_blocks * 64 bytes at block.flat[offset:] (VNNI
    order) against the int8 activations from xq[x_offset]. Nibble tiles: each byte holds weights
    j (low nibble) and j + 16 (high), so each block meets two runs of four activations; 8-bit
    tiles: one unsigned weight a byte."""
    @intrinsic
    def dot(typingctx, block, offset, xq, x_offset, sums):
        sig = types.void(block, offset, xq, x_offset, sums)

        def codegen(context, builder, signature, args):
            block_v, offset_v, xq_v, x_offset_v, sums_v = args
            block_data = context.make_array(signature.args[0])(context, builder, block_v).data
            xq_data = context.make_array(signature.args[2])(context, builder, xq_v).data
            sums_data = context.make_array(signature.args[4])(context, builder, sums_v).data
            low_nibble, four = ir.Constant(_I8x64, [0x0F] * 64), ir.Constant(_I8x64, [4] * 64)
            acc = ir.Constant(_I32x16, [0] * 16)
            for b in range(n_blocks):
                where = builder.add(offset_v, ir.Constant(offset_v.type, 64 * b))
                packed = builder.load(builder.bitcast(builder.gep(block_data, [where]), _I8x64.as_pointer()), align=1)
                if nibbles:
                    runs = ((4 * b, builder.and_(packed, low_nibble)),
                            (16 + 4 * b, builder.and_(builder.lshr(packed, four), low_nibble)))
                else:
                    runs = ((4 * b, packed),)
                for x_first, weights in runs:
                    acc = _vpdpbusd(builder, acc, weights, _four_in_every_lane(builder, xq_data, x_offset_v, x_first))
            builder.store(acc, builder.bitcast(sums_data, _I32x16.as_pointer()), align=4)
            return context.get_dummy_value()
        return sig, codegen
    return dot


dot_16_rows = _dot_16_rows(4, nibbles=True)  # Q4_0, Q4_1, Q4_K: 32 weights in 4 x 64 bytes
dot_16_rows_of_32_bytes = _dot_16_rows(8, nibbles=False)  # Q8_0, Q5_0, Q5_1, Q5_K
dot_16_rows_of_16_bytes = _dot_16_rows(4, nibbles=False)  # Q2_K, Q3_K, Q6_K


@njit(**SERIAL)
def group_absmax(x, t, g):
    """max |x[t, 32 g:32 g + 32]|, or NaN where one of them is NaN or infinite (a broken model):
    the rounded group then gets a NaN scale, so its products are NaN as the float kernel's are,
    never finite numbers made by casting NaN to an integer."""
    amax, finite = np.float32(0), True
    for j in range(32):
        amax = max(amax, abs(x[t, g * 32 + j]))
        finite = finite and np.isfinite(x[t, g * 32 + j])
    return amax if finite else np.float32(np.nan)


@njit(**SERIAL)
def round_activations_to_int8(x):
    """x: (T, n_groups * 32) float32 -> (q (T, cols) int8 within +-127, d (T, n_groups),
    s (T, n_groups)) with x ~= q * d per group of 32 and s = d * sum(q). NaN or inf in a group
    make its d NaN, so its products are NaN, as the float kernel's are."""
    T, cols = x.shape
    n_groups = cols // 32
    q = np.empty((T, cols), np.int8)
    d = np.empty((T, n_groups), np.float32)
    s = np.empty((T, n_groups), np.float32)
    for t in range(T):
        for g in range(n_groups):
            amax = group_absmax(x, t, g)
            inv = np.float32(127) / amax if amax > 0 else np.float32(0)
            total = 0
            for j in range(32):
                v = np.int32(np.rint(x[t, g * 32 + j] * inv))
                q[t, g * 32 + j] = v
                total += v
            d[t, g] = amax / np.float32(127)
            s[t, g] = d[t, g] * np.float32(total)
    return q, d, s


@njit(**PARALLEL)
def matvec_nibbles_vnni(data, scales, xq, xd, xs, out):
    """out[t, r] = sum_k W[r, k] xq[t, k] xd[t, k // 32] for nibble tiles in VNNI order.

    data: (n_tiles, n_groups, 16, 64) uint8 (``to_vnni_order``); scales: (n_tiles, n_groups,
    2, 64) scale and offset, float32 or the bits of float16 (uint16, ``packed_weights``);
    xq, xd, xs: ``round_activations_to_int8``; out: (T, n_tiles * 64). Per group:
    s_w * d_x * sum(q q_x) + o_w * s_x."""
    n_tiles, n_groups = data.shape[0], data.shape[1]
    n_chunks = min(n_tiles, 8)  # a few tiles per work item: the two scratch arrays once per item
    for chunk in prange(n_chunks):
        sums = np.empty(ROWS_PER_LANE_BLOCK, np.int32)
        acc = np.empty(64, np.float32)
        for tile in range(chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks):
            for t in range(xq.shape[0]):
                acc[:] = 0
                x_row = xq[t]
                for g in range(n_groups):
                    block = data[tile, g]
                    scale, offset = scales[tile, g, 0], scales[tile, g, 1]
                    dx, sx = xd[t, g], xs[t, g]
                    prefetch_group(data[tile], scales[tile], g)
                    for lane_block in range(4):
                        dot_16_rows(block, lane_block * 256, x_row, g * 32, sums)
                        scale_16_rows(acc, lane_block * ROWS_PER_LANE_BLOCK, sums, scale, offset, dx, sx)
                out[t, tile * 64:(tile + 1) * 64] = acc


# 8-bit tiles hold signed q; vpdpbusd multiplies unsigned bytes, so their VNNI order stores
# u = q + 128 (the top bit flipped: ``to_vnni_bytes``), and each group's integer sum drops
# 128 sum(q_x) again, exactly, before the scale and offset apply.
BYTE_SHIFT = 128


@njit(**PARALLEL)
def matvec_bytes_vnni(data, scales, xq, xd, out):
    """out[t, r] = sum_k W[r, k] xq[t, k] xd[t, k // 32] for 8-bit tiles in VNNI order.

    data: (n_tiles, n_groups, G, 64) int8 holding q + 128 (``to_vnni_bytes``), groups of G = 32
    or 16 weights; scales: as matvec_nibbles_vnni's; xq, xd: ``round_activations_to_int8``;
    out: (T, n_tiles * 64). Per group: s_w * d_x * (sum(u q_x) - 128 sum(q_x)) + o_w * d_x * sum(q_x)."""
    n_tiles, n_groups, G = data.shape[0], data.shape[1], data.shape[2]
    T = xq.shape[0]
    x_totals = np.zeros((T, n_groups), np.int32)  # sum(q_x) over each weight group
    for t in range(T):
        for k in range(n_groups * G):
            x_totals[t, k // G] += xq[t, k]
    n_chunks = min(n_tiles, 8)
    for chunk in prange(n_chunks):
        sums = np.empty(ROWS_PER_LANE_BLOCK, np.int32)
        acc = np.empty(64, np.float32)
        for tile in range(chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks):
            for t in range(T):
                acc[:] = 0
                x_row = xq[t]
                for g in range(n_groups):
                    block = data[tile, g]
                    dx = xd[t, g * G // 32]
                    shift = np.int32(BYTE_SHIFT) * x_totals[t, g]
                    sx = dx * np.float32(x_totals[t, g])
                    prefetch_group(data[tile], scales[tile], g)
                    for lane_block in range(4):
                        if G == 32:
                            dot_16_rows_of_32_bytes(block, lane_block * 512, x_row, g * 32, sums)
                        else:
                            dot_16_rows_of_16_bytes(block, lane_block * 256, x_row, g * 16, sums)
                        for i in range(ROWS_PER_LANE_BLOCK):
                            sums[i] -= shift
                        scale_16_rows(acc, lane_block * ROWS_PER_LANE_BLOCK, sums, scales[tile, g, 0],
                                      scales[tile, g, 1], dx, sx)
                out[t, tile * 64:(tile + 1) * 64] = acc


def to_vnni_bytes(data: np.ndarray) -> np.ndarray:
    """8-bit tiles (n, n_groups, G, 64) int8 -> q + 128 in VNNI order (int8 storage)."""
    return to_vnni_order(data ^ np.int8(-BYTE_SHIFT))


def from_vnni_bytes(data: np.ndarray) -> np.ndarray:
    """The inverse of ``to_vnni_bytes``: the plain int8 tiles."""
    return from_vnni_order(data) ^ np.int8(-BYTE_SHIFT)


def to_vnni_order(data: np.ndarray) -> np.ndarray:
    """Tiles (n, n_groups, J bytes j, 64 rows) -> the same bytes with each 64 holding 16 rows x 4
    consecutive j: flat index lane_block * 16 J + b * 64 + row16 * 4 + jj for j = 4b + jj and
    row = 16 lane_block + row16 (J = 16 for nibbles; 32 or 16 for 8-bit tiles)."""
    n, g, J = data.shape[:3]
    return np.ascontiguousarray(data.reshape(n, g, J // 4, 4, 4, 16).transpose(0, 1, 4, 2, 5, 3)).reshape(n, g, J, 64)


def from_vnni_order(data: np.ndarray) -> np.ndarray:
    """The inverse of ``to_vnni_order``."""
    n, g, J = data.shape[:3]
    return np.ascontiguousarray(data.reshape(n, g, 4, J // 4, 16, 4).transpose(0, 1, 3, 5, 2, 4)).reshape(n, g, J, 64)
