"""Weight matrices repacked at load for the compiled cpu kernels (``cpu_kernels.py``).

Every integer GGML type is w = scale * q + offset with a small integer q per weight and one
scale/offset per group of 16 or 32 weights (``quant.integer_groups``). Two tile formats hold
them all, without loss:

- **nibbles** (Q4_0, Q4_1, Q4_K): two weights per byte, 4-bit q from 0 to 15;
- **bytes** (Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q5_K, Q6_K): one int8 q per weight.

Rows are grouped in tiles of ``TILE_ROWS`` laid out ``[tile, group, j, row]`` (the kernels
vectorize across rows), with each group's scale and offset ``[tile, group, 2, row]`` beside
them: float32, or float16 where the file's are exact float16s and the kernels widen them in
one instruction (``narrow_scales``: VNNI tiles, and 8-bit tiles on CPUs with F16C or arm64). A
Q4_1 weight takes 0.75 bytes with float32 scales, the file's 0.625 with float16. Where the CPU
has VNNI, the tiles are in ``cpu_vnni``'s order. Float types (F32, F16, BF16) are kept as
float32 rows and multiplied by BLAS.

``matmul`` picks the path by the number of rows of x: a few (decode, or a few sessions decoding
together) run the compiled mat-vec over the tiles; more (prefill) dequantize a few MiB of rows
at a time into one reused buffer and multiply with BLAS, which is faster there (measured in
docs/cpu_backend.md) and never holds a float32 copy of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import cpu_compile, cpu_kernels, cpu_vnni, quant
from .quant import GGMLType

TILE_ROWS = 64
NIBBLE_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K)
FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)

# x with at most this many rows goes through the compiled mat-vec; more go to BLAS on
# dequantized rows (see docs/cpu_backend.md for the crossover).
MATVEC_MAX_ROWS = 8

# Float32 rows dequantized per BLAS product on the prefill path.
DEQUANT_CHUNK_BYTES = 4 << 20

# Rows packed per step at load (bounds the temporaries of quant.integer_groups).
PACK_CHUNK_ROWS = 16 * TILE_ROWS


@dataclass
class PackedMatrix:
    """A (rows, cols) weight matrix in row tiles, or float32 rows for float types."""
    rows: int
    cols: int
    data: np.ndarray | None  # (n_tiles, n_groups, 16 | G, TILE_ROWS) uint8 (nibbles) or int8 (bytes)
    scales: np.ndarray | None  # (n_tiles, n_groups, 2, TILE_ROWS) scale, offset: float32, or float16 (narrow_scales)
    dense: np.ndarray | None = None  # (rows, cols) float32, for float types
    vnni: bool = False  # tiles in cpu_vnni's order (decode: matvec_nibbles_vnni, matvec_bytes_vnni)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.data, self.scales, self.dense) if a is not None)

    @property
    def nibbles(self) -> bool:
        return self.data is not None and self.data.dtype == np.uint8

    def kernel_args(self) -> tuple:
        """(data, scales, kind): the whole matrix as the compiled layer takes it (kind:
        cpu_kernels.BYTES, NIBBLES, VNNI_BYTES or VNNI_NIBBLES)."""
        if self.vnni:
            kind = cpu_kernels.VNNI_NIBBLES if self.nibbles else cpu_kernels.VNNI_BYTES
        else:
            kind = cpu_kernels.NIBBLES if self.nibbles else cpu_kernels.BYTES
        return self.data, kernel_scales(self.scales), kind

    def plain_order(self, data: np.ndarray) -> np.ndarray:
        """Some of this matrix's tiles (``self.data[...]``) in the plain order the float kernels
        read: a copy when they are in VNNI order, else as they are."""
        if not self.vnni:
            return data
        return cpu_vnni.from_vnni_order(data) if self.nibbles else cpu_vnni.from_vnni_bytes(data)

    def matmul(self, x: np.ndarray, start: int = 0, stop: int | None = None, rounded: bool = False) -> np.ndarray:
        """x @ W[start:stop].T in float32: (T, cols) -> (T, stop - start). ``rounded``: a 4-bit
        matrix takes x rounded to 9 bits per 32 (the mat-vec: ``cpu_kernels.matvec_nibbles_int``;
        more tokens: the rounded x through BLAS, the same values), or to 8 bits in VNNI order
        (``cpu_vnni``, 4-bit and 8-bit tiles; its float products read a plain-order copy of the
        tiles). 8-bit matrices in the plain order keep float x: an integer kernel for them was no
        faster in the model (docs/journal.md)."""
        stop = self.rows if stop is None else stop
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.dense is not None:
            return x @ self.dense[start:stop].T
        tile0, tile1 = start // TILE_ROWS, -(-stop // TILE_ROWS)
        if len(x) <= MATVEC_MAX_ROWS:
            out = np.empty((len(x), (tile1 - tile0) * TILE_ROWS), np.float32)
            data, scales = self.data[tile0:tile1], self.scales[tile0:tile1]
            if self.vnni and rounded:
                xq, xd, xs = cpu_vnni.round_activations_to_int8(x)
                if self.nibbles:
                    cpu_vnni.matvec_nibbles_vnni(data, kernel_scales(scales), xq, xd, xs, out)
                else:
                    cpu_vnni.matvec_bytes_vnni(data, kernel_scales(scales), xq, xd, out)
            else:
                data = self.plain_order(data)  # (float products over VNNI tiles: a plain-order copy)
                if rounded and self.nibbles:
                    cpu_kernels.matvec_nibbles_int(data, scales, *cpu_kernels.round_activation_groups(x), out)
                elif self.nibbles:  # (its float kernel reads float32 scales: VNNI tiles' float16 widened)
                    cpu_kernels.matvec_nibbles(data, scales.astype(np.float32, copy=False), x, out)
                else:
                    cpu_kernels.matvec_bytes(data, kernel_scales(scales), x, out)
            skip = start - tile0 * TILE_ROWS
            return out[:, skip:skip + stop - start]
        if rounded and self.vnni:  # the same rounding as the mat-vec's, then float products
            xq, xd, _ = cpu_vnni.round_activations_to_int8(x)
            x = (xq.reshape(len(x), -1, 32) * xd[:, :, None]).astype(np.float32).reshape(x.shape)
        elif rounded and self.nibbles:
            xq, xd, _, _ = cpu_kernels.round_activation_groups(x)
            x = (xq * xd[:, :, None]).astype(np.float32).reshape(x.shape)
        out = np.empty((len(x), stop - start), np.float32)
        chunk_tiles = max(1, DEQUANT_CHUNK_BYTES // (4 * self.cols * TILE_ROWS))
        buf = np.empty((chunk_tiles * TILE_ROWS, self.cols), np.float32)
        for t in range(tile0, tile1, chunk_tiles):
            n = min(chunk_tiles, tile1 - t)
            w = buf[:n * TILE_ROWS]
            self._dequantize_tiles(t, w)
            r0, r1 = max(start, t * TILE_ROWS), min(stop, (t + n) * TILE_ROWS)
            np.matmul(x, w[r0 - t * TILE_ROWS:r1 - t * TILE_ROWS].T, out=out[:, r0 - start:r1 - start])
        return out

    def dequantize(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start:stop as float32 (stop - start, cols), decoded by the compiled kernel."""
        stop = self.rows if stop is None else stop
        if self.dense is not None:
            return self.dense[start:stop].copy()
        tile0, tile1 = start // TILE_ROWS, -(-stop // TILE_ROWS)
        w = np.empty(((tile1 - tile0) * TILE_ROWS, self.cols), np.float32)
        self._dequantize_tiles(tile0, w)
        return w[start - tile0 * TILE_ROWS:stop - tile0 * TILE_ROWS]

    def take_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` as float32 (len(ids), cols), in NumPy: the embedding lookup, and the
        twin of what the kernels decode."""
        if self.dense is not None:
            return self.dense[ids]
        if np.any((ids < 0) | (ids >= self.rows)):
            raise ValueError(f"row ids {ids} outside 0..{self.rows - 1}")
        tiles, lanes = ids // TILE_ROWS, ids % TILE_ROWS
        if self.vnni:  # row r's bytes of a tile in VNNI order: [group, r // 16, j // 4, r % 16, j % 4]
            n_tiles, n_groups, J = self.data.shape[:3]
            blocks = self.data.reshape(n_tiles, n_groups, 4, J // 4, 16, 4)
            q = blocks[tiles, :, lanes // 16, :, lanes % 16, :].reshape(len(ids), n_groups, J)
            if not self.nibbles:
                q = q ^ np.int8(-cpu_vnni.BYTE_SHIFT)
        else:
            q = self.data[tiles, :, :, lanes]  # (T, n_groups, 16 | G)
        if self.nibbles:
            q = np.concatenate([q & np.uint8(0x0F), q >> np.uint8(4)], axis=2)
        scales = self.scales[tiles, :, :, lanes]  # (T, n_groups, 2)
        w = q.astype(np.float32)
        w *= scales[..., 0, None]
        w += scales[..., 1, None]
        return w.reshape(len(ids), self.cols)

    def _dequantize_tiles(self, tile0: int, out: np.ndarray) -> None:
        kernel = cpu_kernels.dequantize_nibbles if self.nibbles else cpu_kernels.dequantize_bytes
        if self.vnni or self.scales.dtype == np.float16:
            # (prompt passes: a few MiB of tiles in the plain order, with float32 scales)
            tile1 = tile0 + len(out) // TILE_ROWS
            kernel(self.plain_order(self.data[tile0:tile1]), self.scales[tile0:tile1].astype(np.float32), 0, out)
            return
        kernel(self.data, self.scales, tile0, out)


def pack(raw: np.ndarray, qtype: GGMLType, rows: int, cols: int, vnni: bool | None = None,
         half_scales: bool | None = None, packed_bytes: Callable[[int, int], None] | None = None) -> PackedMatrix:
    """Repack a row-major (rows, cols) GGML matrix (its raw bytes) into row tiles. ``vnni``:
    tiles in cpu_vnni's order (default: where the CPU has VNNI, ``cpu_vnni.vnni_available``).
    ``half_scales``: 8-bit tiles keep float16 scales where exact (default: where the CPU widens
    float16 in hardware, ``cpu_compile.cpu_has_f16c``); VNNI tiles always do. ``packed_bytes(a,
    b)`` hears after each chunk of rows that raw[a:b] is packed (the loader gives those file pages
    back at once: packing the default model's 30 MB classifier held them all before)."""
    qtype = GGMLType(qtype)
    row_bytes = quant.row_nbytes(qtype, cols)
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if flat.size != rows * row_bytes:
        raise ValueError(f"{qtype.name} matrix {rows}x{cols} needs {rows * row_bytes} bytes, got {flat.size}")
    if qtype in FLOAT_TYPES:
        return PackedMatrix(rows, cols, None, None,
                            dense=quant.dequantize(flat, qtype, rows * cols).reshape(rows, cols))
    n_tiles = -(-rows // TILE_ROWS)
    nibbles = qtype in NIBBLE_TYPES
    vnni = cpu_vnni.vnni_available() if vnni is None else vnni
    group = 32 if nibbles else len(quant.integer_groups(flat[:row_bytes], qtype)[0][0])
    n_groups = cols // group
    data = np.zeros((n_tiles, n_groups, group // 2 if nibbles else group, TILE_ROWS),
                    np.uint8 if nibbles else np.int8)
    scales = np.zeros((n_tiles, n_groups, 2, TILE_ROWS), np.float32)
    for r0 in range(0, rows, PACK_CHUNK_ROWS):
        r1 = min(rows, r0 + PACK_CHUNK_ROWS)
        q, s, o = quant.integer_groups(flat[r0 * row_bytes:r1 * row_bytes], qtype)
        o = np.zeros_like(s) if o is None else o
        q = q.reshape(r1 - r0, n_groups, group)
        if nibbles:
            if q.dtype == np.int8:  # Q4_0 stores q - 8: shift to 0..15, fold -8 * scale into the offset
                q = (q.astype(np.int16) + 8).astype(np.uint8)
                o = o - 8 * s
            q = q[:, :, :group // 2] | (q[:, :, group // 2:] << np.uint8(4))
        tiles = slice(r0 // TILE_ROWS, -(-r1 // TILE_ROWS))
        n = tiles.stop - tiles.start
        q_pad = np.zeros((n * TILE_ROWS,) + q.shape[1:], data.dtype)
        q_pad[:r1 - r0] = q.view(data.dtype)
        chunk = q_pad.reshape(n, TILE_ROWS, n_groups, -1).transpose(0, 2, 3, 1)
        if vnni:  # (chunk by chunk: no whole-matrix copies, whose peak was +114 MB for the classifier)
            chunk = cpu_vnni.to_vnni_order(chunk) if nibbles else cpu_vnni.to_vnni_bytes(chunk)
        data[tiles] = chunk
        if packed_bytes is not None:
            packed_bytes(r0 * row_bytes, r1 * row_bytes)
        so_pad = np.zeros((n * TILE_ROWS, n_groups, 2), np.float32)
        so_pad[:r1 - r0] = np.stack([s, o], axis=-1).reshape(r1 - r0, n_groups, 2)
        scales[tiles] = so_pad.reshape(n, TILE_ROWS, n_groups, 2).transpose(0, 2, 3, 1)
    half_scales = not nibbles and (cpu_compile.cpu_has_f16c() if half_scales is None else half_scales)
    if vnni or half_scales:
        scales = narrow_scales(scales)
    return PackedMatrix(rows, cols, data, scales, vnni=vnni)


def narrow_scales(scales: np.ndarray) -> np.ndarray:
    """The scales as float16 where every one is exactly a float16 (Q4_0 and Q4_1 files store
    them so, and Q8_0, Q5_0 and Q5_1 too; the K-quants' products of two scales mostly are not),
    else as they are. The VNNI and 8-bit kernels read them (``cpu_compile.scale_16_rows``):
    0.625 bytes a Q4_1 weight instead of 0.75, 1.125 a Q8_0 weight instead of 1.25."""
    narrow = scales.astype(np.float16)
    for t in range(0, len(scales), 64):  # (compared 64 tiles at a time: no whole float32 copy)
        if not np.array_equal(narrow[t:t + 64].astype(np.float32), scales[t:t + 64]):
            return scales
    return narrow


def kernel_scales(scales: np.ndarray) -> np.ndarray:
    """Scales as the compiled kernels take them: float16 as its bits (uint16; numba has no float16)."""
    return scales.view(np.uint16) if scales.dtype == np.float16 else scales


def stack(matrices: list[PackedMatrix]) -> PackedMatrix | None:
    """The rows of several packed matrices with the same columns and format, one after another
    (a layer's wq, wk, wv: one kernel call reads them all). None when they cannot be stacked:
    different formats, or row counts that do not fill whole tiles."""
    first = matrices[0]
    same = all(m.cols == first.cols and m.dense is None and first.dense is None
               and m.data.dtype == first.data.dtype and m.data.shape[1:] == first.data.shape[1:]
               and m.vnni == first.vnni and m.scales.dtype == first.scales.dtype for m in matrices)
    if not same or any(m.rows % TILE_ROWS for m in matrices):
        return None
    return PackedMatrix(sum(m.rows for m in matrices), first.cols,
                        np.concatenate([m.data for m in matrices]),
                        np.concatenate([m.scales for m in matrices]), vnni=first.vnni)


class PackedWeights:
    """Weight access for the cpu forward pass over packed matrices: the same interface as
    ``float_weights.CpuWeights`` (its float twin), with every matrix repacked once, at load.

    A layer's matrices that read the same input (wq, wk, wv; w1, w3) are stacked into one packed
    matrix when their formats allow, so one kernel call reads them all."""

    def __init__(self, mf, vnni: bool | None = None):
        self.mf = mf
        self.vnni = cpu_vnni.vnni_available() if vnni is None else vnni  # integer tiles in VNNI order
        self.half_scales = cpu_compile.cpu_has_f16c()  # 8-bit tiles with float16 scales (where exact)
        self.packed: dict[str, PackedMatrix] = {}
        self.stacked: dict[tuple[str, ...], PackedMatrix] = {}
        self.group_of: dict[str, tuple] = {}
        self._layer_args: dict[str, tuple | None] = {}  # decode_layer_args, by the layer's wq

    def fuse(self, tensors: tuple) -> None:
        for t in tensors:
            self.group_of[t.name] = tensors

    def vector(self, t) -> np.ndarray:
        return quant.dequantize(self.mf.tensor_bytes(t.name), t.qtype, t.n_elements)

    def matrix(self, t) -> PackedMatrix:
        """The packed matrix of ``t``, packed now if it was not yet (the loader calls this for
        every matrix, off the frame thread). The last member of a fused group stacks the group."""
        if t.name not in self.packed:
            cols, rows = t.shape
            self.packed[t.name] = pack(self.mf.tensor_bytes(t.name), t.qtype, rows, cols, self.vnni,
                                       self.half_scales, lambda a, b: self.mf.release_pages(t.name, a, b))
            self.mf.release_pages(t.name)  # the packed copy is all the kernels read
            group = self.group_of.get(t.name)
            if group and all(member.name in self.packed for member in group):
                stacked = stack([self.packed[member.name] for member in group])
                if stacked is not None:
                    self.stacked[tuple(member.name for member in group)] = stacked
                    for member in group:  # the stack holds their rows; drop the copies
                        self.packed[member.name] = _rows_of(stacked, group, member)
        return self.packed[t.name]

    def matmul(self, x: np.ndarray, t, start: int = 0, stop: int | None = None, rounded: bool = False) -> np.ndarray:
        """``rounded``: 4-bit matrices take x rounded to 9 bits (PackedMatrix.matmul)."""
        return self.matrix(t).matmul(x, start, stop, rounded)

    def matmul_fused(self, x: np.ndarray, tensors: tuple, rounded: bool = False) -> list[np.ndarray]:
        stacked = self.stacked.get(tuple(t.name for t in tensors))
        if stacked is None:
            for t in tensors:
                self.matrix(t)  # packing the last member stacks the group
            stacked = self.stacked.get(tuple(t.name for t in tensors))
        if stacked is None:
            return [self.matmul(x, t, rounded=rounded) for t in tensors]
        out, outs, first = stacked.matmul(x, rounded=rounded), [], 0
        for t in tensors:
            outs.append(out[:, first:first + t.shape[1]])
            first += t.shape[1]
        return outs

    def decode_layer_args(self, layer) -> tuple | None:
        """(wqkv, wo, w13, w2) kernel arguments of a layer for ``cpu_kernels.decode_attention``
        and ``decode_ffn``, or None where q k v or w1 w3 could not be stacked (mixed formats)."""
        if layer.wq.name not in self._layer_args:
            qkv, w13 = (layer.wq, layer.wk, layer.wv), (layer.w1, layer.w3)
            for t in qkv + w13 + (layer.wo, layer.w2):
                self.matrix(t)
            stacks = [self.stacked.get(tuple(t.name for t in group)) for group in (qkv, w13)]
            args = None if None in stacks else (
                stacks[0].kernel_args(), self.packed[layer.wo.name].kernel_args(),
                stacks[1].kernel_args(), self.packed[layer.w2.name].kernel_args())
            self._layer_args[layer.wq.name] = args
        return self._layer_args[layer.wq.name]

    def rows(self, t, ids: np.ndarray) -> np.ndarray:
        return self.matrix(t).take_rows(np.asarray(ids, dtype=np.int64))


def _rows_of(stacked: PackedMatrix, group: tuple, member) -> PackedMatrix:
    """The member's rows of a stacked matrix, as a view (whole tiles: stack() checked it)."""
    first = sum(m.shape[1] for m in group[:group.index(member)]) // TILE_ROWS
    n = member.shape[1] // TILE_ROWS
    view = slice(first, first + n)
    return PackedMatrix(member.shape[1], member.shape[0], stacked.data[view], stacked.scales[view],
                        vnni=stacked.vnni)
