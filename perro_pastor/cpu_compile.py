"""How the cpu backend's kernels are compiled (numba): where the machine code is cached, and
the two sets of options every kernel module (``cpu_kernels``, ``cpu_vnni``) uses."""

from __future__ import annotations

import os


def _use_user_cache_folder() -> None:
    """numba caches compiled kernels beside this file by default; an installed package folder
    may be read-only, so use the user's cache folder unless NUMBA_CACHE_DIR says otherwise."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    import numba
    from platformdirs import user_cache_dir
    numba.config.CACHE_DIR = os.path.join(user_cache_dir("perro_pastor"), "numba")


_use_user_cache_folder()

from numba import njit, prange  # noqa: E402  (after the cache folder is set)

# Floating-point contraction (FMA) and reassociation let LLVM vectorize and fuse the
# accumulations: ~20% faster mat-vecs, within float32 rounding of the strict order.
_FAST = {"contract", "reassoc", "nsz"}
PARALLEL = dict(parallel=True, nogil=True, cache=True, fastmath=_FAST)
SERIAL = dict(nogil=True, cache=True, fastmath=_FAST)  # per-token ops: one thread, no launch cost


# -----------------------------------------------------------------------------
# software prefetch: the kernels stream their weights once per token, and asking for the bytes
# a little ahead keeps more memory reads in flight than the hardware prefetchers do alone

from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402


@intrinsic
def prefetch(typingctx, array, index):
    """Ask for the cache line holding array's element ``index`` (counted from the first element
    of a C-contiguous array, and allowed past its end: a prefetch never faults)."""
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_pointer = ir.IntType(8).as_pointer()
        address = builder.bitcast(builder.gep(data, [args[1]]), byte_pointer)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # read, keep, data
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def float_from_bits(typingctx, bits):
    """The float32 whose bits are the int32 ``bits`` (a bit cast, which numba lacks for scalars)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


# Each mat-vec streams its weights from memory once per token. Asking for a group's bytes and
# scales PREFETCH_BYTES ahead keeps more reads in flight than the hardware prefetchers do:
# the tied Q8_0 classifier of the default model went from 2.2-2.5 to 1.5-1.7 ms a token.
PREFETCH_BYTES = 4096


@njit(**SERIAL)
def prefetch_group(tile_bytes, tile_scales, g):
    """Prefetch what group g + (PREFETCH_BYTES ahead) of a tile will read: tile_bytes is one
    tile's (n_groups, j, R) weights (any order within a group), tile_scales its (n_groups, 2, R)
    scales (float32, or float16 bits)."""
    group_bytes = tile_bytes.shape[1] * tile_bytes.shape[2]
    for line in range(0, group_bytes, 64):
        prefetch(tile_bytes, g * group_bytes + line + PREFETCH_BYTES)
    group_scales = 2 * tile_scales.shape[2]  # float32 or float16 words
    per_line = 64 // tile_scales.itemsize
    for line in range(0, group_scales, per_line):
        prefetch(tile_scales, g * group_scales + line + PREFETCH_BYTES // tile_scales.itemsize)
