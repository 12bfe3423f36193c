"""Compiling the cpu kernels (``cpu_kernels.py``) before the first step needs them: numba compiles
a kernel for each set of argument types on its first call (tens of seconds on a first run, a
fraction of a second from the user's cache afterwards), so ``warm_up`` calls each one once on
tiny arrays of the types a decode step passes."""

from __future__ import annotations

import numpy as np

from .cpu_kernels import (BYTES, NIBBLES, VNNI_BYTES, VNNI_NIBBLES, apply_rope, attention, decode_attention, decode_ffn,
                          dequantize_bytes, dequantize_nibbles, matvec_bytes, matvec_nibbles, matvec_nibbles_int,
                          rmsnorm, round_activation_groups, swiglu)
from .cpu_compile import cpu_has_f16c
from .cpu_vnni import matvec_bytes_vnni, matvec_nibbles_vnni, round_activations_to_int8, vnni_available


def cache_is_warm() -> bool:
    """Whether the compiled kernels of cpu_kernels.py were cached before (a first run compiles for
    tens of seconds; later runs load them in a fraction of a second)."""
    import numba
    from pathlib import Path
    folder = Path(numba.config.CACHE_DIR) if numba.config.CACHE_DIR else Path(__file__).parent / "__pycache__"
    return any(folder.rglob("cpu_kernels.matvec_nibbles-*.nbi"))


def warm_up() -> None:
    """Compile (or load from the cache) every kernel for the argument types a decode step
    passes, so the first step does not stall on it."""
    f32 = np.float32
    # 8-bit tiles' scales: float16 bits where the CPU widens float16 (packed_weights.narrow_scales)
    byte_scales = np.uint16 if cpu_has_f16c() else f32
    x, out, scales = np.ones((1, 32), f32), np.empty((1, 128), f32), np.ones((2, 1, 2, 64), f32)
    nibble_tiles, byte_tiles = np.zeros((2, 1, 16, 64), np.uint8), np.zeros((2, 1, 32, 64), np.int8)
    matvec_nibbles(nibble_tiles, scales, x, out)
    matvec_nibbles_int(nibble_tiles, scales, *round_activation_groups(x), out)  # (batched decode)
    matvec_bytes(byte_tiles, scales.astype(byte_scales), x, out)
    dequantize_nibbles(nibble_tiles, scales, 0, np.empty((128, 32), f32))
    dequantize_bytes(byte_tiles, scales, 0, np.empty((128, 32), f32))
    rmsnorm(x, x[0], 1e-5)
    # the compiled layer halves, for files of 4-bit and of 8-bit matrices (mixed files compile
    # their combination on first use); 4-bit tiles in VNNI order where the CPU has VNNI
    vnni = vnni_available()
    kinds = [VNNI_BYTES, VNNI_NIBBLES] if vnni else [BYTES, NIBBLES]
    if vnni:  # (scales as float16 bits, as Q4_0, Q4_1 and Q8_0 files pack: packed_weights.narrow_scales)
        xq, xd, xs = round_activations_to_int8(x)
        matvec_nibbles_vnni(np.zeros((1, 1, 16, 64), np.uint8), np.ones((1, 1, 2, 64), np.uint16), xq, xd, xs,
                            np.empty((1, 64), f32))
        matvec_bytes_vnni(np.zeros((1, 1, 32, 64), np.int8), np.ones((1, 1, 2, 64), np.uint16), xq, xd,
                          np.empty((1, 64), f32))
    for kind in kinds:
        nibbles = kind in (NIBBLES, VNNI_NIBBLES)
        R = 64  # rows per tile (packed_weights.TILE_ROWS)

        def matrix(rows, cols):
            shape = (-(-rows // R), cols // 32, 16 if nibbles else 32, R)
            scale_type = np.uint16 if vnni else f32 if nibbles else byte_scales
            return (np.zeros(shape, np.uint8 if nibbles else np.int8),
                    np.ones((shape[0], cols // 32, 2, R), scale_type), kind)
        x1, cache = np.ones((1, 32), f32), np.zeros((1, 4, 16), f32)  # dim 32: 2 heads, 1 kv head
        decode_attention(x1, x1[0], 1e-5, matrix(64, 32), matrix(32, 32), np.ones((1, 8), np.complex64),
                         cache, cache, 0, 2, 1, 0, True)
        decode_ffn(x1, x1[0], 1e-5, matrix(64, 32), matrix(32, 32), 32, True)
    q = np.ones((1, 2, 16), f32)
    apply_rope(q, np.ones((1, 8), np.complex64))
    attention(q, np.ones((1, 4, 16), f32), np.ones((1, 4, 16), f32), 0, 0)
    swiglu(x, x)
    # several sequences decoding together: q, k and the gate/up halves are column slices of
    # one product (non-contiguous views, a layout numba compiles separately)
    stacked = np.ones((2, 64), f32)
    apply_rope(stacked[:, :32].reshape(2, 2, 16), np.ones((2, 8), np.complex64))
    swiglu(stacked[:, :32], stacked[:, 32:])
