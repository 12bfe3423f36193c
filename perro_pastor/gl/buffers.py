"""GPU buffers: weight tensors as raw GGUF blocks, and f32/int scratch buffers.

Weights are uploaded byte for byte as they sit in the file (the shaders read unaligned block
fields with the helpers in ``shaders/common/bytes.glsl``), so the upload is a memcpy and the NumPy
twins decode the very same bytes. Only the tail is padded to a whole 4-byte word.

A tensor bigger than GL_MAX_SHADER_STORAGE_BLOCK_SIZE (128 MiB on llvmpipe; the tied output layer
of a 7B model is bigger) is split into several buffers of whole rows. The launchers dispatch once
per part, so kernels never see the split.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def row_bytes(self) -> int:
        return row_nbytes(self.qtype, self.cols)

    def release(self) -> None:
        for p in self.parts:
            p.buffer.release()
        self.parts = []


def _pad4(data: bytes | memoryview | np.ndarray) -> bytes:
    raw = bytes(data)
    rem = len(raw) % 4
    return raw if rem == 0 else raw + b"\0" * (4 - rem)


def rows_per_part(row_bytes: int, max_bytes: int) -> int:
    """How many whole rows fit in one buffer of at most ``max_bytes`` (padding included)."""
    n = (max_bytes - 3) // row_bytes
    if n < 1:
        raise BackendError(f"one weight row of {row_bytes} bytes exceeds the SSBO limit of {max_bytes} bytes")
    return n


def upload_weight(
    glctx: GLContext, raw, qtype: GGMLType | int, rows: int, cols: int, name: str = "weight"
) -> GLWeight:
    """Upload ``raw`` (the tensor's bytes from the file, rows x cols) split by whole rows."""
    qtype = GGMLType(int(qtype))
    if qtype not in TYPE_INFO:
        raise BackendError(f"tensor {name}: unsupported tensor type {qtype.name}")
    if cols % 8:
        raise BackendError(f"tensor {name}: row length {cols} is not a multiple of 8 (gl kernels decode 8 at a time)")
    rb = row_nbytes(qtype, cols)
    buf = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1).view(np.uint8)
    if buf.size != rows * rb:
        raise BackendError(f"tensor {name}: {qtype.name} {rows}x{cols} needs {rows * rb} bytes, got {buf.size}")
    per_part = rows_per_part(rb, glctx.max_ssbo_bytes)
    parts = []
    for row0 in range(0, rows, per_part):
        n = min(per_part, rows - row0)
        data = _pad4(buf[row0 * rb : (row0 + n) * rb])
        parts.append(WeightPart(glctx.ctx.buffer(data), row0, n))
    glctx.check_error(f"uploading tensor {name}")
    return GLWeight(name, qtype, rows, cols, parts)


def f32_buffer(glctx: GLContext, data: np.ndarray | int):
    """An SSBO of float32: from an array, or zero-filled with ``data`` elements."""
    if isinstance(data, (int, np.integer)):
        return glctx.ctx.buffer(reserve=max(4, int(data) * 4))
    return glctx.ctx.buffer(np.ascontiguousarray(data, dtype=np.float32).tobytes())


def i32_buffer(glctx: GLContext, data: np.ndarray | int):
    """An SSBO of int32 (token ids, positions)."""
    if isinstance(data, (int, np.integer)):
        return glctx.ctx.buffer(reserve=max(4, int(data) * 4))
    return glctx.ctx.buffer(np.ascontiguousarray(data, dtype=np.int32).tobytes())


def read_f32(buf, shape=None) -> np.ndarray:
    """Read a float32 buffer back (blocks until the GPU is done: tests and debugging only)."""
    a = np.frombuffer(buf.read(), dtype=np.float32).copy()
    return a if shape is None else a[: int(np.prod(shape))].reshape(shape)


def read_i32(buf, n: int | None = None) -> np.ndarray:
    a = np.frombuffer(buf.read(), dtype=np.int32).copy()
    return a if n is None else a[:n]
