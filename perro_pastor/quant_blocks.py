"""The block layouts of GGML's integer types, and a decoder per type from raw blocks to groups of
small integers with their scales (quant.py's ``dequantize`` and ``integer_groups`` use them)."""

from __future__ import annotations

import numpy as np

from .quant_types import GGMLType


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


GROUP_DECODERS = {
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
