"""GGML tensor types: one table row per type, and NumPy dequantizers (the cpu twins of
``shaders/common/dequant.glsl``).

Block layouts are facts of the GGML format; ``gguf.quants.dequantize`` is the oracle the tests
compare against bit for bit.
"""

from __future__ import annotations

import numpy as np

from .quant_blocks import BLOCK_DTYPES, GROUP_DECODERS, Groups
from .quant_types import TYPE_INFO, GGMLType, TypeInfo, is_supported, row_nbytes, type_name

__all__ = ["BLOCK_DTYPES", "TYPE_INFO", "GGMLType", "Groups", "TypeInfo", "dequantize", "dequantize_rows",
           "integer_groups", "is_supported", "matmul", "round_half_away", "row_nbytes", "type_name"]


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
                q, scale, offset = GROUP_DECODERS[qtype](blocks[i : i + step])
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
    if qtype not in GROUP_DECODERS:
        raise ValueError(f"{qtype.name} is not an integer block type")
    info = TYPE_INFO[qtype]
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if flat.size % info.type_size:
        raise ValueError(f"{qtype.name}: {flat.size} bytes is not a whole number of {info.type_size}-byte blocks")
    with np.errstate(invalid="ignore", over="ignore"):
        return GROUP_DECODERS[qtype](flat.view(BLOCK_DTYPES[qtype]))


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
