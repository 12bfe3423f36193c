"""LoRA factors as the kernels read them: an adapted weight's A and B on the GPU (``LoraPair``),
the int8 rows of the fused path, and the two arguments a fused decode step passes to launchers
(``LoraA`` to the kernel that makes x, ``FusedLora`` to the mat-vec that reads it).

Which deltas get fused, and when, is ``lora_fusion``'s business; this module only lays out data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BackendError
from ..quant import GGMLType, round_half_away
from .buffers import upload_weight
from .context import GLContext
from .dispatcher import Dispatcher
from .shader_loader import LORA_AX_WORDS, LORA_PARTS_WORD

LORA_AX_UBO_BYTES = LORA_AX_WORDS * 4  # the uniform block of A x a fused mat-vec reads


def padded_rank(rank: int) -> int:
    """A LoRA rank padded with zero rows to a multiple of 8 (kernels decode 8 weights at a time;
    a fused mat-vec reads A x in quads of this many)."""
    return (rank + 7) // 8 * 8


def rows_int8(b: np.ndarray) -> np.ndarray:
    """A LoRA factor (rows, n; n % 4 == 0) as the fused kernels read it (B: matvec.comp's
    epilogue; stacked A: common/lora_a.glsl): per row, the largest |value| as f32 bits, then the
    row scaled to -127..127 (rounded half away from zero) as int8, four per uint32 word.
    (rows, 1 + n / 4) uint32."""
    rows, rank = b.shape
    top = np.abs(b).max(axis=1).astype(np.float32)
    q = round_half_away(b * np.divide(127.0, top, out=np.zeros_like(top), where=top != 0)[:, None]).astype(np.int8)
    out = np.empty((rows, 1 + rank // 4), np.uint32)
    out[:, 0] = top.view(np.uint32)
    out[:, 1:] = q.view(np.uint32)
    return out


def a_rows_int8(a: np.ndarray) -> np.ndarray:
    """Stacked A factors (rows, cols; cols % 16 == 0) as common/lora_a.glsl reads them: every
    row's largest |value| (f32 bits), padded to a multiple of 4 words, then the rows scaled to
    -127..127 (``rows_int8``'s rounding) as int8, so each row starts on a 16-byte boundary and
    a lane reads 16 of its weights with one uvec4 load. Flat uint32."""
    rows, cols = a.shape
    packed = rows_int8(a)
    scales = np.zeros((rows + 3) // 4 * 4, np.uint32)
    scales[:rows] = packed[:, 0]
    return np.concatenate([scales, packed[:, 1:].ravel()])


class LoraPair:
    """A (rank, cols) and B (rows, rank) of one adapted weight, uploaded as f32.

    The rank is padded with zeros to a multiple of 8 (kernels decode 8 weights at a time); the
    padding adds nothing to B (A x).
    """

    def __init__(self, glctx: GLContext, a: np.ndarray, b: np.ndarray, name: str = "lora") -> None:
        rank, cols = a.shape
        rows, rank_b = b.shape
        if rank_b != rank:
            raise BackendError(f"LoRA {name}: A is {a.shape} but B is {b.shape}; ranks differ")
        padded = padded_rank(rank)
        a_pad = np.zeros((padded, cols), np.float32)
        a_pad[:rank] = a
        b_pad = np.zeros((rows, padded), np.float32)
        b_pad[:, :rank] = b
        self.rank = rank
        self.a = upload_weight(glctx, a_pad.view(np.uint8), GGMLType.F32, padded, cols, f"{name}.lora_a")
        self.b = upload_weight(glctx, b_pad.view(np.uint8), GGMLType.F32, rows, padded, f"{name}.lora_b")
        self.b_rows_q8 = glctx.ctx.buffer(rows_int8(b_pad).tobytes())  # what a fused mat-vec reads

    def release(self) -> None:
        self.a.release()
        self.b.release()
        self.b_rows_q8.release()


@dataclass(frozen=True)
class FusedLora:
    """A LoRA delta for ``matvec`` to add in its epilogue: ``scale * B (A x)``, with A x (f32, the
    padded rank) already computed into ``ax`` from element ``ax_offset`` on (a multiple of 4)."""
    pair: LoraPair
    ax: object
    scale: float
    ax_offset: int = 0


@dataclass(frozen=True)
class LoraA:
    """LoRA A factors for the kernel that produces x (rmsnorm, attention, swiglu) to apply to it,
    for the fused deltas of the mat-vecs that read x: A x lands in the first words of ``work``
    (``lora_work``), where their ``FusedLora.ax`` points (common/lora_a.glsl)."""
    rows_int8: object  # (rows, 1 + cols / 4) uint32: ``rows_int8`` of the stacked, padded A factors
    rows: int
    cols: int
    work: object


def lora_work(gpu: Dispatcher, n_parts: int):
    """The work buffer of common/lora_a.glsl with room for ``n_parts`` partial sums, kept
    between calls; made zeroed (the kernels leave its counter at 0 after every dispatch)."""
    return gpu.scratch("lora_work", (LORA_PARTS_WORD + n_parts) * 4, zeroed=True)


def bind_lora_a(gpu: Dispatcher, lora_a: LoraA | None, binding: int, n_groups: int) -> dict[str, int]:
    """Bind a producer kernel's LoRA A and work buffer (common/lora_a.glsl) at ``binding`` and
    ``binding + 1``; returns the uniforms (lora_rows 0: none)."""
    if lora_a is None:
        return {"lora_rows": 0}
    if (LORA_PARTS_WORD + n_groups * lora_a.rows) * 4 > lora_a.work.size:
        raise BackendError(f"LoRA A x: a work buffer of {lora_a.work.size} bytes has no room for "
                           f"{n_groups} parts of {lora_a.rows} rows")
    gpu.bind(lora_a.rows_int8, binding)
    gpu.bind(lora_a.work, binding + 1)
    return {"lora_rows": lora_a.rows, "lora_cols": lora_a.cols}
