"""GPU buffers: weight tensors as GGUF blocks (raw or repacked), and f32/int scratch buffers.

Most weight types are uploaded byte for byte as they sit in the file (the shaders read unaligned
block fields with the helpers in ``shaders/common/bytes.glsl``); only the tail is padded to a whole
4-byte word. Q4_0, Q4_1 and Q8_0, the types of the default model and of most small models, are
*repacked* by default (``repack_blocks``): on llvmpipe a SIMD lane per invocation makes every
unaligned word read a gather, and reading a block as two aligned uvec4s instead of ~17 words
made the mat-vec ~1.5-2x faster (docs/gl_kernels.md). The repack only moves bytes, so the kernels
decode exactly the weights the NumPy twins decode from the file.

A tensor bigger than GL_MAX_SHADER_STORAGE_BLOCK_SIZE (128 MiB on llvmpipe; the tied output layer
of a 7B model is bigger) is split into several buffers of whole rows. The launchers dispatch once
per part, so kernels never see the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

import numpy as np

from ..errors import BackendError
from ..quant import TYPE_INFO, GGMLType, row_nbytes
from .context import GLContext


@dataclass
class WeightPart:
    """Rows ``row0 .. row0 + n_rows`` of a weight tensor, in one SSBO."""

    buffer: object  # moderngl.Buffer
    row0: int
    n_rows: int


@dataclass
class GLWeight:
    """A (rows, cols) weight matrix of one GGML type, as one or more row-split buffers."""

    name: str
    qtype: GGMLType
    rows: int
    cols: int
    parts: list[WeightPart]
    repacked: bool = False  # blocks regrouped by repack_blocks (shaders need `#define REPACKED`)

    @property
    def row_bytes(self) -> int:
        return row_nbytes(self.qtype, self.cols)

    @property
    def defines(self) -> dict[str, int]:
        """The shader ``#define``s that select this weight's decoder (type and layout)."""
        d = {f"QUANT_{self.qtype.name}": 1}
        if self.repacked:
            d["REPACKED"] = 1
        return d

    def release(self) -> None:
        for p in self.parts:
            p.buffer.release()
        self.parts = []


# Types repack_blocks knows: block bytes -> (offset of the quant bytes, bytes of scale header).
REPACKABLE = {GGMLType.Q4_0: 2, GGMLType.Q4_1: 4, GGMLType.Q8_0: 2}


def repack_blocks(blocks: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """Regroup 32-weight blocks so a shader reads them with aligned uvec4 loads.

    ``blocks`` is (n, type_size) uint8, the file's blocks in row-major order. Every 4 blocks
    become one group: a uvec4 holding the 4 blocks' scale fields (the f16 d, or the f16 pair d, m,
    zero-extended to a 32-bit word), then each block's quant bytes (16 for Q4_*, 32 for Q8_0),
    in order. The last group is zero-padded. Returns the group words as uint32, ready to upload;
    ``shaders/common/dequant.glsl`` (REPACKED) reads them back.
    """
    hdr = REPACKABLE[qtype]
    n, size = blocks.shape
    ng = (n + 3) // 4
    scales = np.zeros((ng * 4, 4), np.uint8)
    scales[:n, :hdr] = blocks[:, :hdr]
    quants = np.zeros((ng * 4, size - hdr), np.uint8)
    quants[:n] = blocks[:, hdr:]
    groups = np.concatenate([scales.reshape(ng, 16), quants.reshape(ng, 4 * (size - hdr))], axis=1)
    return groups.reshape(-1).view(np.uint32)


def repacked_nbytes(qtype: GGMLType, n_blocks: int) -> int:
    """Bytes of ``n_blocks`` blocks after repack_blocks (whole groups of 4)."""
    q = TYPE_INFO[qtype].type_size - REPACKABLE[qtype]
    return (n_blocks + 3) // 4 * (16 + 4 * q)


def rows_per_part(row_bytes: int, max_bytes: int) -> int:
    """How many whole rows fit in one buffer of at most ``max_bytes`` (padding included)."""
    n = (max_bytes - 3) // row_bytes
    if n < 1:
        raise BackendError(f"one weight row of {row_bytes} bytes exceeds the SSBO limit of {max_bytes} bytes")
    return n


@dataclass
class PreparedWeight:
    """A weight's GPU payload built on the host (any thread): one uint8 array per SSBO part.

    ``prepare_weight`` makes it without touching GL, so a loader can run it on a worker thread;
    ``upload_prepared`` (or ``upload_prepared_steps``, a chunk per step) then creates the buffers
    on the GL thread."""

    name: str
    qtype: GGMLType
    rows: int
    cols: int
    parts: list[tuple[int, int, np.ndarray]]  # (row0, n_rows, payload bytes as uint8)
    repacked: bool

    @property
    def nbytes(self) -> int:
        return sum(p[2].nbytes for p in self.parts)


REPACK_SLICE_BLOCKS = 1 << 16  # blocks repacked at a time (a multiple of 4): bounds temporaries


def prepare_weight(raw, qtype: GGMLType | int, rows: int, cols: int, max_ssbo_bytes: int,
                   name: str = "weight", repack: bool = True) -> PreparedWeight:
    """Validate ``raw`` (the tensor's bytes, rows x cols) and lay it out for upload, split by rows.

    Pure host work, no GL: safe on a worker thread (NumPy releases the GIL while copying).
    ``repack`` (default on) regroups Q4_0/Q4_1/Q8_0 blocks for aligned loads (``repack_blocks``),
    a slice of blocks at a time so the temporaries stay small whatever the tensor's size; other
    types, and ``repack=False``, go up byte for byte (padded to a whole word)."""
    qtype = GGMLType(int(qtype))
    if qtype not in TYPE_INFO:
        raise BackendError(f"tensor {name}: unsupported tensor type {qtype.name}")
    if cols % 8:
        raise BackendError(f"tensor {name}: row length {cols} is not a multiple of 8 (gl kernels decode 8 at a time)")
    rb = row_nbytes(qtype, cols)
    buf = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1).view(np.uint8)
    if buf.size != rows * rb:
        raise BackendError(f"tensor {name}: {qtype.name} {rows}x{cols} needs {rows * rb} bytes, got {buf.size}")
    repacked = repack and qtype in REPACKABLE
    if repacked:
        # whole groups of 4 blocks (a group may straddle two rows) within the limit
        nb = cols // TYPE_INFO[qtype].block_size
        per_part = 4 * (max_ssbo_bytes // repacked_nbytes(qtype, 4)) // nb
        if per_part < 1:
            raise BackendError(f"tensor {name}: one repacked row of {repacked_nbytes(qtype, nb)} bytes "
                               f"exceeds the SSBO limit of {max_ssbo_bytes} bytes")
    else:
        per_part = rows_per_part(rb, max_ssbo_bytes)
    parts = []
    for row0 in range(0, rows, per_part):
        n = min(per_part, rows - row0)
        chunk = buf[row0 * rb : (row0 + n) * rb]
        parts.append((row0, n, _repacked(chunk, qtype) if repacked else _padded(chunk)))
    return PreparedWeight(name, qtype, rows, cols, parts, repacked)


def _repacked(chunk: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """repack_blocks over ``chunk``'s blocks, REPACK_SLICE_BLOCKS at a time (groups never span
    two slices, so the result is the same as one call)."""
    size = TYPE_INFO[qtype].type_size
    blocks = chunk.reshape(-1, size)
    out = np.empty(repacked_nbytes(qtype, len(blocks)), np.uint8)
    group = repacked_nbytes(qtype, 4)
    for b0 in range(0, len(blocks), REPACK_SLICE_BLOCKS):
        piece = repack_blocks(blocks[b0:b0 + REPACK_SLICE_BLOCKS], qtype).view(np.uint8)
        o = b0 // 4 * group
        out[o:o + piece.size] = piece
    return out


def _padded(chunk: np.ndarray) -> np.ndarray:
    out = np.zeros((chunk.size + 3) // 4 * 4, np.uint8)
    out[:chunk.size] = chunk
    return out


def upload_prepared_steps(glctx: GLContext, prepared: PreparedWeight, chunk_bytes: int = 4 << 20,
                          made: list | None = None, on_bytes=None) -> Generator[None, None, GLWeight]:
    """Create ``prepared``'s buffers and write them ``chunk_bytes`` at a time, yielding after each
    write (a step boundary for a frame-budgeted loader). Returns the GLWeight.

    The weight is appended to ``made`` before its first buffer exists, and its buffers join its
    ``parts`` as they are created, so a caller that abandons the generator midway still releases
    everything with ``GLWeight.release``. ``on_bytes(n)`` hears about every chunk written."""
    weight = GLWeight(prepared.name, prepared.qtype, prepared.rows, prepared.cols, [], prepared.repacked)
    if made is not None:
        made.append(weight)
    for row0, n_rows, data in prepared.parts:
        if data.nbytes <= chunk_bytes:  # one GL call creates and fills it
            weight.parts.append(WeightPart(glctx.ctx.buffer(data), row0, n_rows))
            if on_bytes is not None:
                on_bytes(data.nbytes)
            yield
            continue
        buffer = glctx.ctx.buffer(reserve=data.nbytes)
        weight.parts.append(WeightPart(buffer, row0, n_rows))
        for offset in range(0, data.nbytes, chunk_bytes):
            piece = data[offset:offset + chunk_bytes]
            buffer.write(piece, offset=offset)
            if on_bytes is not None:
                on_bytes(piece.nbytes)
            yield
    glctx.check_error(f"uploading tensor {prepared.name}")
    return weight


def upload_prepared(glctx: GLContext, prepared: PreparedWeight) -> GLWeight:
    """``prepared`` uploaded in one go (one write per buffer)."""
    steps = upload_prepared_steps(glctx, prepared, chunk_bytes=max(1, glctx.max_ssbo_bytes))
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def upload_weight(
    glctx: GLContext, raw, qtype: GGMLType | int, rows: int, cols: int, name: str = "weight",
    repack: bool = True,
) -> GLWeight:
    """Upload ``raw`` (the tensor's bytes from the file, rows x cols) split by whole rows:
    ``prepare_weight`` then ``upload_prepared``.

    ``repack`` (default on) regroups Q4_0/Q4_1/Q8_0 blocks for aligned loads (``repack_blocks``);
    other types, and ``repack=False``, go up byte for byte.
    """
    return upload_prepared(glctx, prepare_weight(raw, qtype, rows, cols, glctx.max_ssbo_bytes, name, repack))


def f32_buffer(glctx: GLContext, data: np.ndarray | int):
    """An SSBO of float32: from an array, or zero-filled with ``data`` elements (zeroed here: a
    reserved buffer's contents are undefined, and on NVIDIA they are whatever was there before)."""
    if isinstance(data, (int, np.integer)):
        return glctx.ctx.buffer(bytes(max(4, int(data) * 4)))
    return glctx.ctx.buffer(np.ascontiguousarray(data, dtype=np.float32).tobytes())


def i32_buffer(glctx: GLContext, data: np.ndarray | int):
    """An SSBO of int32 (token ids, positions): from an array, or zero-filled."""
    if isinstance(data, (int, np.integer)):
        return glctx.ctx.buffer(bytes(max(4, int(data) * 4)))
    return glctx.ctx.buffer(np.ascontiguousarray(data, dtype=np.int32).tobytes())


def read_f32(buf, shape=None) -> np.ndarray:
    """Read a float32 buffer back (blocks until the GPU is done: tests and debugging only)."""
    a = np.frombuffer(buf.read(), dtype=np.float32).copy()
    return a if shape is None else a[: int(np.prod(shape))].reshape(shape)


def read_i32(buf, n: int | None = None) -> np.ndarray:
    a = np.frombuffer(buf.read(), dtype=np.int32).copy()
    return a if n is None else a[:n]
