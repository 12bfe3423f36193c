"""GGML tensor types: one table row per type (weights per block, bytes per block). Facts of the
GGML format; quant.py re-exports them beside the dequantizers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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
