"""GGML tensor types: one table row per type, and NumPy dequantizers (the cpu twins of
``shaders/common/dequant.glsl``).

Block layouts are facts of the GGML format; ``gguf.quants.dequantize`` is the oracle the tests
compare against bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30


@dataclass(frozen=True)
class TypeInfo:
    block_size: int  # weights per block
    type_size: int  # bytes per block


TYPE_INFO: dict[GGMLType, TypeInfo] = {
    GGMLType.F32: TypeInfo(1, 4),
    GGMLType.F16: TypeInfo(1, 2),
    GGMLType.BF16: TypeInfo(1, 2),
    GGMLType.Q4_0: TypeInfo(32, 18),
    GGMLType.Q4_1: TypeInfo(32, 20),
    GGMLType.Q5_0: TypeInfo(32, 22),
    GGMLType.Q5_1: TypeInfo(32, 24),
    GGMLType.Q8_0: TypeInfo(32, 34),
    GGMLType.Q2_K: TypeInfo(256, 84),
    GGMLType.Q3_K: TypeInfo(256, 110),
    GGMLType.Q4_K: TypeInfo(256, 144),
    GGMLType.Q5_K: TypeInfo(256, 176),
    GGMLType.Q6_K: TypeInfo(256, 210),
}


def type_name(type_id: int) -> str:
    try:
        return GGMLType(type_id).name
    except ValueError:
        return str(type_id)


def is_supported(type_id: int) -> bool:
    return type_id in TYPE_INFO.keys()


def row_nbytes(qtype: GGMLType, n_weights: int) -> int:
    """Bytes taken by ``n_weights`` consecutive weights (a multiple of the block size)."""
    info = TYPE_INFO[qtype]
    if n_weights % info.block_size:
        raise ValueError(f"{qtype.name} row of {n_weights} is not a multiple of {info.block_size}")
    return n_weights // info.block_size * info.type_size


# -----------------------------------------------------------------------------
# block layouts (ggml's block_* structs; all little-endian, packed, no padding)
#
# Every integer type stores its weights as w = scale * q + offset: a small integer q per weight,
# and one float scale (and, for some types, an offset) per group of 16 or 32 weights. Each
# decoder below reads a 1-D array of blocks and returns those groups: q as (n_groups, group)
# integers, scale and offset as (n_groups,) float32 (offset None where the type has none). The
# scale and offset are computed with ggml's float operations, so ``dequantize`` (scale first,
# then the offset) is bit-exact with ``gguf.quants.dequantize``; the compiled cpu kernels
# (packed_weights.py) repack the same groups.

_F16 = "<f2"
BLOCK_DTYPES: dict[GGMLType, np.dtype] = {
    GGMLType.Q4_0: np.dtype([("d", _F16), ("qs", "u1", 16)]),
    GGMLType.Q4_1: np.dtype([("d", _F16), ("m", _F16), ("qs", "u1", 16)]),
    GGMLType.Q5_0: np.dtype([("d", _F16), ("qh", "u1", 4), ("qs", "u1", 16)]),
    GGMLType.Q5_1: np.dtype([("d", _F16), ("m", _F16), ("qh", "u1", 4), ("qs", "u1", 16)]),
    GGMLType.Q8_0: np.dtype([("d", _F16), ("qs", "i1", 32)]),
    GGMLType.Q2_K: np.dtype([("scales", "u1", 16), ("qs", "u1", 64), ("d", _F16), ("dmin", _F16)]),
    GGMLType.Q3_K: np.dtype([("hmask", "u1", 32), ("qs", "u1", 64), ("scales", "u1", 12), ("d", _F16)]),
    GGMLType.Q4_K: np.dtype([("d", _F16), ("dmin", _F16), ("scales", "u1", 12), ("qs", "u1", 128)]),
    GGMLType.Q5_K: np.dtype(
        [("d", _F16), ("dmin", _F16), ("scales", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)]
    ),
    GGMLType.Q6_K: np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", _F16)]),
}

_U8 = np.uint8
_U64 = np.dtype("<u8")

Groups = tuple  # (q (n_groups, group) int8/uint8, scale (n_groups,) f32, offset (n_groups,) f32 | None)


def _f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


def _nibbles(qs: np.ndarray, groups: int) -> np.ndarray:
    """Split (nb, groups*L) bytes into (nb, groups, 2, L) 4-bit values: for each group of L
    bytes, first the L low nibbles, then the L high nibbles (the order ggml stores weights in)."""
    nb = qs.shape[0]
    src = qs.reshape(nb, groups, -1)
    q = np.empty((nb, groups, 2, src.shape[2]), dtype=np.uint8)
    np.bitwise_and(src, _U8(0x0F), out=q[:, :, 0])
    np.right_shift(src, _U8(4), out=q[:, :, 1])
    return q


def _crumbs(qs: np.ndarray, run: int = 32) -> np.ndarray:
    """Split (nb, H*run) bytes into (nb, H, 4, run) 2-bit values: for each run of bytes, bits
    0-1 of all of them, then bits 2-3, 4-5, 6-7 (the Q2_K/Q3_K/Q6_K order)."""
    nb = qs.shape[0]
    src = qs.reshape(nb, -1, run)
    q = np.empty((nb, src.shape[1], 4, run), dtype=np.uint8)
    for i in range(4):
        np.right_shift(src, _U8(2 * i), out=q[:, :, i])
    q &= _U8(0x03)
    return q


def _or_bit_planes(q: np.ndarray, bits: np.ndarray, bit: int) -> None:
    """Q3_K hmask / Q5_K qh: bit s of byte l of (nb, 32) ``bits`` is bit ``bit`` of weight l of
    sub-block s. OR it into (nb, 8, 32) ``q``. Works on 8 bytes at a time: the shifts move bit s
    of each byte to bit ``bit`` of the same byte, and the mask drops what crossed a byte."""
    nb = q.shape[0]
    words = np.ascontiguousarray(bits).view(_U64)  # (nb, 4)
    planes = np.empty((nb, 8, 4), dtype=_U64)
    for s in range(8):
        if s <= bit:
            np.left_shift(words, _U64.type(bit - s), out=planes[:, s])
        else:
            np.right_shift(words, _U64.type(s - bit), out=planes[:, s])
    planes &= _U64.type(int.from_bytes(bytes([1 << bit]) * 8, "little"))
    q |= planes.view(np.uint8).reshape(q.shape)


def _signed(q: np.ndarray, bias: int) -> np.ndarray:
    """q - bias as int8 (the subtraction wraps in uint8; the int8 view is the signed value)."""
    q -= _U8(bias)
    return q.view(np.int8)


def _k4_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12 scale bytes of Q4_K/Q5_K into 8 six-bit scales and 8 six-bit mins.
    Bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3; bytes 8-11 hold the low 4 bits of
    scale/min 4-7, and the spare top 2 bits of bytes 0-7 complete them."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & _U8(63), (hi & _U8(15)) | ((lo >> _U8(6)) << _U8(4))], axis=1)
    m = np.concatenate([mid & _U8(63), (hi >> _U8(4)) | ((mid >> _U8(6)) << _U8(4))], axis=1)
    return sc, m


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    """Unpack the 12 scale bytes of Q3_K into 16 signed six-bit scales (stored with +32 bias).
    Low 4 bits: low nibbles of bytes 0-7 (scales 0-7), then their high nibbles (8-15). Top 2
    bits: scale i takes bits 2*(i//4), 2*(i//4)+1 of byte 8 + i%4."""
    nb = s.shape[0]
    low = np.concatenate([s[:, 0:8] & _U8(15), s[:, 0:8] >> _U8(4)], axis=1)
    sc = low | (_crumbs(s[:, 8:12], 4).reshape(nb, 16) << _U8(4))
    return _signed(sc, 32)


def _groups_q4_0(b: np.ndarray) -> Groups:
    # w = d * (q - 8), q 4-bit
    return _signed(_nibbles(b["qs"], 1), 8).reshape(-1, 32), _f32(b["d"]), None


def _groups_q4_1(b: np.ndarray) -> Groups:
    # w = d * q + m, q 4-bit
    return _nibbles(b["qs"], 1).reshape(-1, 32), _f32(b["d"]), _f32(b["m"])


def _q5(b: np.ndarray) -> np.ndarray:
    # 5-bit q: low nibble from qs; bit i of the little-endian uint32 qh is bit 4 of weight i
    nb = b.shape[0]
    q = _nibbles(b["qs"], 1).reshape(nb, 32)
    q |= np.unpackbits(b["qh"], axis=1, bitorder="little") << _U8(4)
    return q


def _groups_q5_0(b: np.ndarray) -> Groups:
    # w = d * (q - 16)
    return _signed(_q5(b), 16), _f32(b["d"]), None


def _groups_q5_1(b: np.ndarray) -> Groups:
    # w = d * q + m
    return _q5(b), _f32(b["d"]), _f32(b["m"])


def _groups_q8_0(b: np.ndarray) -> Groups:
    # w = d * q, q int8
    return b["qs"], _f32(b["d"]), None


def _groups_q2_k(b: np.ndarray) -> Groups:
    # 16 sub-blocks of 16: w = (d * scale) * q - (dmin * min), q 2-bit, scale/min 4-bit
    s = b["scales"]
    dl = _f32(b["d"])[:, None] * _f32(s & _U8(15))
    ml = _f32(b["dmin"])[:, None] * _f32(s >> _U8(4))
    return _crumbs(b["qs"]).reshape(-1, 16), dl.reshape(-1), -ml.reshape(-1)


def _groups_q3_k(b: np.ndarray) -> Groups:
    # 16 sub-blocks of 16: w = (d * scale) * (q - 4 * !hbit), q 2 low bits + 1 high bit (hmask)
    nb = b.shape[0]
    dl = _f32(b["d"])[:, None] * _f32(_q3_k_scales(b["scales"]))
    q = _crumbs(b["qs"]).reshape(nb, 8, 32)
    _or_bit_planes(q, b["hmask"], 2)
    return _signed(q, 4).reshape(-1, 16), dl.reshape(-1), None


def _groups_q4_k(b: np.ndarray) -> Groups:
    # 8 sub-blocks of 32: w = (d * scale) * q - (dmin * min), q 4-bit, scale/min 6-bit
    sc, m = _k4_scale_min(b["scales"])
    dl = _f32(b["d"])[:, None] * _f32(sc)
    ml = _f32(b["dmin"])[:, None] * _f32(m)
    return _nibbles(b["qs"], 4).reshape(-1, 32), dl.reshape(-1), -ml.reshape(-1)


def _groups_q5_k(b: np.ndarray) -> Groups:
    # as Q4_K, plus a fifth bit: bit s of qh[l] is bit 4 of weight l in sub-block s
    nb = b.shape[0]
    sc, m = _k4_scale_min(b["scales"])
    dl = _f32(b["d"])[:, None] * _f32(sc)
    ml = _f32(b["dmin"])[:, None] * _f32(m)
    q = _nibbles(b["qs"], 4).reshape(nb, 8, 32)
    _or_bit_planes(q, b["qh"], 4)
    return q.reshape(-1, 32), dl.reshape(-1), -ml.reshape(-1)


def _groups_q6_k(b: np.ndarray) -> Groups:
    # 16 sub-blocks of 16: w = (d * scale) * (q - 32), q 6-bit = 4 low bits (ql) + 2 high (qh),
    # scale int8. Each 128-weight half takes 64 ql bytes (low nibbles, then high) and 32 qh bytes
    # (bits 0-1, 2-3, 4-5, 6-7 for its four runs of 32).
    nb = b.shape[0]
    dl = _f32(b["d"])[:, None] * _f32(b["scales"])
    q = _nibbles(b["ql"], 2).reshape(nb, 2, 4, 32)
    qh = _crumbs(b["qh"])
    qh <<= _U8(4)
    q |= qh
    return _signed(q, 32).reshape(-1, 16), dl.reshape(-1), None


_GROUPS = {
    GGMLType.Q4_0: _groups_q4_0,
    GGMLType.Q4_1: _groups_q4_1,
    GGMLType.Q5_0: _groups_q5_0,
    GGMLType.Q5_1: _groups_q5_1,
    GGMLType.Q8_0: _groups_q8_0,
    GGMLType.Q2_K: _groups_q2_k,
    GGMLType.Q3_K: _groups_q3_k,
    GGMLType.Q4_K: _groups_q4_k,
    GGMLType.Q5_K: _groups_q5_k,
    GGMLType.Q6_K: _groups_q6_k,
}

# Weights decoded per pass: the temporaries of one pass (a few bytes per weight) and its 512 KiB
# of output stay in a core's L2 cache. Measured: 2^17 is ~1.5x faster per weight than 2^15.
_CHUNK_WEIGHTS = 1 << 17

# Rows dequantized per step of `matmul` when the caller gives no row_chunk: ~8 MiB of f32.
_MATMUL_CHUNK_BYTES = 8 << 20


# -----------------------------------------------------------------------------
# public API


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero (C's roundf, which GGML quantizes
    with; NumPy's rint rounds halves to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def dequantize(
    raw: np.ndarray, qtype: GGMLType, n: int | None = None, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode GGML-encoded bytes to a flat float32 array of ``n`` weights.

    ``raw`` is any uint8 array (e.g. a memory-mapped tensor view); its bytes are read in order.
    ``n`` defaults to every whole block in ``raw``; when given, ``raw`` must hold at least
    ``row_nbytes(qtype, n)`` bytes and only those are read. ``out``, a C-contiguous float32 array
    of ``n`` elements, receives the weights instead of a new array (reusing it saves the page
    faults of a fresh allocation, which cost as much as decoding Q8_0).
    Non-finite scales decode to inf/NaN silently, as in ggml: checking weights is not this
    function's job.
    """
    qtype = GGMLType(qtype)
    info = TYPE_INFO[qtype]
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if n is None:
        if flat.size % info.type_size:
            raise ValueError(
                f"{qtype.name}: {flat.size} bytes is not a whole number of {info.type_size}-byte blocks"
            )
        n = flat.size // info.type_size * info.block_size
    nbytes = row_nbytes(qtype, n)
    if nbytes > flat.size:
        raise ValueError(f"{qtype.name}: {n} weights need {nbytes} bytes, got {flat.size}")
    flat = flat[:nbytes]
    if out is None:
        out = np.empty(n, dtype=np.float32)
    elif out.dtype != np.float32 or out.size != n or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of {n} elements, got {out.dtype} {out.shape}")
    y = out.reshape(-1)

    if qtype == GGMLType.F32:
        y[:] = flat.view("<f4")
    elif qtype == GGMLType.F16:
        y[:] = flat.view("<f2")
    elif qtype == GGMLType.BF16:
        # bf16 is the top half of an f32
        np.left_shift(flat.view("<u2"), np.uint32(16), out=y.view(np.uint32))
    else:
        blocks = flat.view(BLOCK_DTYPES[qtype])
        y2 = y.reshape(-1, info.block_size)
        step = max(1, _CHUNK_WEIGHTS // info.block_size)
        with np.errstate(invalid="ignore", over="ignore"):
            for i in range(0, blocks.shape[0], step):
                q, scale, offset = _GROUPS[qtype](blocks[i : i + step])
                yg = y2[i : i + step].reshape(q.shape)
                np.copyto(yg, q, casting="unsafe")  # cast first, then scale in place: faster
                yg *= scale[:, None]
                if offset is not None:
                    yg += offset[:, None]
    return out


def integer_groups(raw: np.ndarray, qtype: GGMLType) -> Groups:
    """The blocks in ``raw`` (whole blocks of an integer type) as w = scale * q + offset groups:
    q (n_groups, group) int8 or uint8, scale (n_groups,) float32, offset (n_groups,) float32 or
    None. ``dequantize`` is exactly ``scale[:, None] * q + offset[:, None]`` in float32."""
    qtype = GGMLType(qtype)
    if qtype not in _GROUPS:
        raise ValueError(f"{qtype.name} is not an integer block type")
    info = TYPE_INFO[qtype]
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if flat.size % info.type_size:
        raise ValueError(f"{qtype.name}: {flat.size} bytes is not a whole number of {info.type_size}-byte blocks")
    with np.errstate(invalid="ignore", over="ignore"):
        return _GROUPS[qtype](flat.view(BLOCK_DTYPES[qtype]))


def _check_matrix(w_raw: np.ndarray, qtype: GGMLType, rows: int, cols: int) -> tuple[np.ndarray, int]:
    """The bytes of a (rows, cols) matrix as a flat uint8 view, and the bytes per row."""
    row_bytes = row_nbytes(qtype, cols)
    flat = np.ascontiguousarray(w_raw).reshape(-1).view(np.uint8)
    if rows < 0 or flat.size != rows * row_bytes:
        raise ValueError(
            f"{GGMLType(qtype).name} matrix {rows}x{cols} needs {rows * row_bytes} bytes, got {flat.size}"
        )
    return flat, row_bytes


def dequantize_rows(
    w_raw: np.ndarray, qtype: GGMLType, rows: int, cols: int, start: int, stop: int
) -> np.ndarray:
    """Rows ``start:stop`` of a row-major (rows, cols) GGML matrix as (stop-start, cols) float32,
    reading only their bytes (the embedding lookup of one token needs one row, not the table)."""
    flat, row_bytes = _check_matrix(w_raw, qtype, rows, cols)
    if not 0 <= start <= stop <= rows:
        raise ValueError(f"row range {start}:{stop} outside 0:{rows}")
    raw = flat[start * row_bytes : stop * row_bytes]
    return dequantize(raw, qtype, (stop - start) * cols).reshape(stop - start, cols)


def matmul(
    x: np.ndarray,
    w_raw: np.ndarray,
    qtype: GGMLType,
    rows: int,
    cols: int,
    row_chunk: int | None = None,
) -> np.ndarray:
    """x @ W.T for W a row-major (rows, cols) GGML matrix: (T, cols) -> (T, rows); (cols,) -> (rows,).

    W is dequantized ``row_chunk`` rows at a time into one reused f32 buffer, so memory stays
    bounded by the chunk whatever the matrix size (a model whose f32 weights would not fit in RAM
    still runs). The result has x's dtype: float64 in, float64 out (the reference path, where the
    f32 weights are widened exactly); float32 in, float32 out (BLAS sgemm).
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    if x.shape[-1:] != (cols,) or x.ndim not in (1, 2):
        raise ValueError(f"x has shape {x.shape}, expected (T, {cols})")
    flat, row_bytes = _check_matrix(w_raw, qtype, rows, cols)
    if row_chunk is None:
        row_chunk = max(1, _MATMUL_CHUNK_BYTES // (4 * max(cols, 1)))
    if row_chunk < 1:
        raise ValueError(f"row_chunk must be >= 1, got {row_chunk}")

    x2 = x.reshape(-1, cols)
    out = np.empty((x2.shape[0], rows), dtype=x.dtype)
    buf = np.empty(min(row_chunk, rows) * cols, dtype=np.float32)
    for r0 in range(0, rows, row_chunk):
        r1 = min(r0 + row_chunk, rows)
        w = buf[: (r1 - r0) * cols]
        dequantize(flat[r0 * row_bytes : r1 * row_bytes], qtype, w.size, out=w)
        w = w.reshape(r1 - r0, cols)
        if x.dtype == np.float64:
            w = w.astype(np.float64)
        np.matmul(x2, w.T, out=out[:, r0:r1])
    return out.reshape(x.shape[:-1] + (rows,))
