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


@intrinsic
def scale_16_rows(typingctx, acc, first, sums, scale, offset, dx, sx):
    """acc[first:first + 16] += scale[first:...] * dx * sums[0:16] + offset[first:...] * sx as
    16-lane vector code, the epilogue of a group in the mat-vecs. sums: int32 (the VNNI
    kernel's integer sums) or float32; scale and offset: float32, or the bits of float16
    (uint16) widened by one instruction (vcvtph2ps). Written out because LLVM left this loop
    scalar for float16 scales. acc, scale and offset must hold 16 values from ``first`` on."""
    if scale.dtype not in (types.float32, types.uint16) or offset.dtype != scale.dtype \
            or sums.dtype not in (types.int32, types.float32):
        return None
    sig = types.void(acc, first, sums, scale, offset, dx, sx)
    f32x16, lanes = ir.VectorType(ir.FloatType(), 16), ir.VectorType(ir.IntType(32), 16)
    fuse = ("contract",)  # a multiply and an add may become one FMA, as in the compiled loops

    def codegen(context, builder, signature, args):
        acc_v, first_v, sums_v, scale_v, offset_v, dx_v, sx_v = args

        def pointer(i, value, at, vector_type):
            data = context.make_array(signature.args[i])(context, builder, value).data
            return builder.bitcast(builder.gep(data, [at]), vector_type.as_pointer())

        def widened(i, value):
            if signature.args[i].dtype == types.float32:
                return builder.load(pointer(i, value, first_v, f32x16), align=4)
            words = builder.load(pointer(i, value, first_v, ir.VectorType(ir.IntType(16), 16)), align=2)
            return builder.fpext(builder.bitcast(words, ir.VectorType(ir.HalfType(), 16)), f32x16)

        def splat(x):
            one = builder.insert_element(ir.Constant(f32x16, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(one, ir.Constant(f32x16, ir.Undefined), ir.Constant(lanes, [0] * 16))

        zero = ir.Constant(first_v.type, 0)
        if signature.args[2].dtype == types.int32:
            totals = builder.sitofp(builder.load(pointer(2, sums_v, zero, lanes), align=4), f32x16)
        else:
            totals = builder.load(pointer(2, sums_v, zero, f32x16), align=4)
        target = pointer(0, acc_v, first_v, f32x16)
        scaled = builder.fmul(builder.fmul(widened(3, scale_v), splat(dx_v), flags=fuse), totals, flags=fuse)
        step = builder.fadd(scaled, builder.fmul(widened(4, offset_v), splat(sx_v), flags=fuse), flags=fuse)
        builder.store(builder.fadd(builder.load(target, align=4), step, flags=fuse), target, align=4)
        return context.get_dummy_value()
    return sig, codegen


def cpu_has_f16c() -> bool:
    """Whether this CPU widens float16 in hardware (x86's F16C; every 64-bit ARM CPU does), as
    LLVM sees it: where it does not, tiles keep float32 scales. False when numba compiles for
    another CPU (NUMBA_CPU_NAME)."""
    import platform

    import llvmlite.binding as llvm
    import numba
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    return platform.machine().lower() in ("arm64", "aarch64") or bool(llvm.get_host_cpu_features().get("f16c", False))


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
