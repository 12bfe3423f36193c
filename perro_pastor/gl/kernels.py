"""Kernel launchers: one Python call per shader in ``shaders/``, named after the op.

Each launcher binds buffers to the fixed roles the shader header lists, sets its uniforms and
dispatches. Shapes are passed explicitly so a narrated forward pass reads like llama2.c:

    kernels.rmsnorm(s.xb, s.x, w.rms_att_weight, dim=cfg.dim, eps=cfg.rms_eps)
    kernels.matvec(s.q, w.wq, s.xb)

Long dispatches are split by rows (``max_weights_per_dispatch``) so no single submission stalls a
frame; the caller can also pass ``row_offset``/``n_rows`` to spread one mat-vec over several ticks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..errors import BackendError
from ..quant import GGMLType, round_half_away
from .buffers import GLWeight, upload_weight
from .context import GLContext
from .layer_ops import LayerOps
from .sampling_ops import SamplingOps
from .shader_loader import compile_compute

# Dispatch sizes. On a CPU rasterizer a dispatch runs inside glDispatchCompute, so its length is
# what a frame pays: 1 M weights of mat-vec is ~0.5-1 ms on 2-core llvmpipe, well under the 3 ms
# per dispatch that lets a scheduler hold a 4 ms budget. A real GPU does this in microseconds
# while each dispatch costs ~20 us of Python, so there every cap is HARDWARE_DISPATCH_SCALE
# times larger (measured on an H100: prefill 97 -> 280 tok/s).
DEFAULT_MAX_WEIGHTS_PER_DISPATCH = 1 << 20
HARDWARE_DISPATCH_SCALE = 16

MATVEC_WG = 16
MATMUL_WG = 8
# Batched prefill (matmul.comp): rows per invocation, the largest token tile (smaller when TT
# tokens of x do not fit one uniform block), and the multiply-adds one dispatch may hold (~1.5 ms
# of the mat-mat on idle 2-core llvmpipe; docs/gl_kernels.md, prefill figures).
MATMUL_TT = 16
MATMUL_SMALL_TT = 4  # the token tile of batches of 2-4 tokens (NPCs decoding together)
DEFAULT_MAX_MACS_PER_DISPATCH = 2 << 20
MATMUL_MIN_TOKENS = 2  # matvec routes n_tokens >= this to matmul
MAX_X_UBO_BYTES = 65536  # llvmpipe's GL_MAX_UNIFORM_BLOCK_SIZE; capped by the context's own
# A x of a fused LoRA delta (stacked ranks up to 1024) is read as a uniform block of this size,
# from the start of the work buffer of common/lora_a.glsl (its counter, then its parts, follow)
LORA_AX_UBO_BYTES = 4096
LORA_PARTS_WORD = LORA_AX_UBO_BYTES // 4 + 4
MIN_UNIFORM_BLOCK_BYTES = 16384  # GL_MAX_UNIFORM_BLOCK_SIZE is at least this everywhere


def _matmul_nr(tt: int, software: bool) -> int:
    """Rows per mat-mat invocation. On llvmpipe NR x TT accumulators stay in registers up to ~32
    (it spills beyond; measured: TT 4 -> NR 8 is 1.3x NR 4, TT 16 -> NR 4 is 1.4x NR 8). A GPU
    wants more, smaller invocations: NR 4 (on an H100, 4 NPCs batched: NR 8 1.7x, NR 4 2.5x+)."""
    return 8 if software and tt <= MATMUL_SMALL_TT else 4


def _row_slices(weight: GLWeight, row_offset: int, n_rows: int, step: int):
    """(part, start, end) for rows row_offset .. row_offset + n_rows - 1 of ``weight``, in slices of
    at most ``step`` rows that never cross a buffer part (one dispatch per slice: a mat-vec's or a
    mat-mat's, with the part's buffer bound at binding 0)."""
    lo, hi = row_offset, row_offset + n_rows
    for part in weight.parts:
        a, b = max(lo, part.row0), min(hi, part.row0 + part.n_rows)
        if a >= b:
            continue
        for start in range(a, b, step):
            yield part, start, min(b, start + step)


def _groups(n: int, size: int) -> int:
    return (n + size - 1) // size


# Decode mat-vecs repeat the same few hundred calls every token; their resolved launches are kept
# (``Kernels.matvec``), up to this many (then forgotten all at once and made again as needed).
MAX_KEPT_LAUNCHES = 4096


@dataclass
class Launch:
    """One launcher call resolved: the bindings it makes, then per dispatch (weight part buffer,
    program, work groups, uniforms). Resolving a mat-vec (defines, program lookup, row slices) is
    ~40 us of Python, twice what replaying it costs, and a decode step makes ~350 of them.
    ``keep`` holds the arguments the key names by id, so no other object can take their ids."""
    keep: tuple
    binds: list = field(default_factory=list)
    dispatches: list = field(default_factory=list)


def _bind_key(buf) -> object:
    """What identifies a bindable argument: a buffer by identity, a ``BufferSlice`` by its range
    (a fresh slice object is made per call)."""
    inner = getattr(buf, "buffer", None)
    return id(buf) if inner is None else (id(inner), buf.offset, buf.size)


class Kernels(LayerOps, SamplingOps):
    """Compiled programs (cached per shader + defines) and their launchers for one GL context."""

    def __init__(self, glctx: GLContext, *, max_weights_per_dispatch: int | None = None,
                 matvec_rows_per_invocation: int = 8, matvec_x_ubo: bool = True,
                 max_macs_per_dispatch: int | None = None,
                 matmul_min_tokens: int = MATMUL_MIN_TOKENS) -> None:
        self.glctx = glctx
        self.ctx = glctx.ctx
        self.software = glctx.limits.software
        self.dispatch_scale = 1 if self.software else HARDWARE_DISPATCH_SCALE
        self.max_weights_per_dispatch = max_weights_per_dispatch or DEFAULT_MAX_WEIGHTS_PER_DISPATCH * self.dispatch_scale
        self.matvec_nr = matvec_rows_per_invocation
        self.matvec_x_ubo = matvec_x_ubo  # off: x always from an SSBO (for benchmarks)
        self.max_macs_per_dispatch = max_macs_per_dispatch or DEFAULT_MAX_MACS_PER_DISPATCH * self.dispatch_scale
        self.matmul_min_tokens = matmul_min_tokens  # a huge value keeps prefill on matvec.comp
        self.dry_run = False  # launchers create their programs but dispatch nothing (warm-up)
        self.x_ubo_bytes = min(MAX_X_UBO_BYTES, int(self.ctx.info.get("GL_MAX_UNIFORM_BLOCK_SIZE", 0) or 0))
        self._programs: dict[tuple, object] = {}
        self._scratch: dict[str, object] = {}
        self._uniforms: dict[int, dict[str, object]] = {}  # id(program) -> the values last written
        self._matvec_launches: dict[tuple, Launch] = {}
        self.dispatches = 0  # counted so tests and the scheduler can see how work was split

    # -- plumbing -------------------------------------------------------------------------------

    def program(self, name: str, **defines: object):
        key = (name, tuple(sorted(defines.items())))
        prog = self._programs.get(key)
        if prog is None:
            prog = compile_compute(self.ctx, name, defines)
            self._programs[key] = prog
        return prog

    def scratch(self, name: str, nbytes: int):
        """A launcher-owned buffer of at least nbytes, reused between calls (grown when too small)."""
        buf = self._scratch.get(name)
        if buf is None or buf.size < nbytes:
            if buf is not None:
                buf.release()
            buf = self.ctx.buffer(reserve=max(16, nbytes))
            self._scratch[name] = buf
        return buf

    def lora_work(self, n_parts: int):
        """The work buffer of common/lora_a.glsl with room for ``n_parts`` partial sums, kept
        between calls; made zeroed (the kernels leave its counter at 0 after every dispatch)."""
        nbytes = (LORA_PARTS_WORD + n_parts) * 4
        buf = self._scratch.get("lora_work")
        if buf is None or buf.size < nbytes:
            if buf is not None:
                buf.release()
            buf = self.ctx.buffer(bytes(nbytes))
            self._scratch["lora_work"] = buf
        return buf

    def _lora_a(self, lora_a: "LoraA | None", binding: int, n_groups: int) -> dict[str, int]:
        """Bind a producer kernel's LoRA A and work buffer (common/lora_a.glsl) at ``binding`` and
        ``binding + 1``; returns the uniforms (lora_rows 0: none)."""
        if lora_a is None:
            return {"lora_rows": 0}
        if (LORA_PARTS_WORD + n_groups * lora_a.rows) * 4 > lora_a.work.size:
            raise BackendError(f"LoRA A x: a work buffer of {lora_a.work.size} bytes has no room for "
                               f"{n_groups} parts of {lora_a.rows} rows")
        lora_a.rows_int8.bind_to_storage_buffer(binding)
        lora_a.work.bind_to_storage_buffer(binding + 1)
        return {"lora_rows": lora_a.rows, "lora_cols": lora_a.cols}

    def release(self) -> None:
        """Free the compiled programs and launcher scratch buffers (they are made on demand again)."""
        for obj in [*self._programs.values(), *self._scratch.values()]:
            obj.release()
        self._programs.clear()
        self._uniforms.clear()
        self._matvec_launches.clear()
        self._scratch.clear()

    def _run(self, prog, gx: int, gy: int = 1, gz: int = 1, **uniforms: object) -> None:
        # a program keeps its uniforms between dispatches: write only those that changed
        # (~7 us of Python each, ~10 per dispatch; most stay the same from token to token)
        last = self._uniforms.setdefault(id(prog), {})
        for k, v in uniforms.items():
            if k not in last or last[k] != v:
                prog[k] = v
                last[k] = v
        limit = self.glctx.limits.max_group_count
        if gx > limit[0] or gy > limit[1] or gz > limit[2]:
            raise BackendError(f"dispatch ({gx}, {gy}, {gz}) exceeds GL_MAX_COMPUTE_WORK_GROUP_COUNT {limit}")
        if gx and gy and gz and not self.dry_run:
            prog.run(gx, gy, gz)
            self.dispatches += 1

    def barrier(self) -> None:
        """Make SSBO writes of earlier dispatches visible to later ones.

        Not on a CPU renderer: there a dispatch has finished writing when glDispatchCompute
        returns, and llvmpipe implements glMemoryBarrier as a full glFinish, which inside a game
        waits for the rasterizer threads still drawing the last frame (0.02 ms median, but up
        to 150 ms, measured in the sample game)."""
        if not self.software:
            self.ctx.memory_barrier()

    # -- embedding ------------------------------------------------------------------------------

    def embedding(self, out, weight: GLWeight, tokens, n_tokens: int = 1, token_offset: int = 0) -> None:
        """out[t, :] = row ``tokens[token_offset + t]`` of the embedding table, dequantized.

        The ids are read on the GPU, so a token sampled by the previous step never visits the CPU.
        A table split across buffers takes one dispatch per part; each writes the tokens it holds.
        """
        prog = self.program("embedding.comp", **weight.defines)
        tokens.bind_to_storage_buffer(1)
        out.bind_to_storage_buffer(2)
        for part in weight.parts:
            part.buffer.bind_to_storage_buffer(0)
            self._run(prog, _groups(weight.cols // 8, 32), n_tokens, dim=weight.cols, vocab=weight.rows,
                      token_offset=token_offset, part_row0=part.row0, part_rows=part.n_rows)
        self.barrier()

    # -- matvec ---------------------------------------------------------------------------------

    def matvec(self, dst, weight: GLWeight, x, n_tokens: int = 1, accumulate: bool = False,
               row_offset: int = 0, n_rows: int | None = None, dst_stride: int | None = None,
               scale: float = 1.0, lora: "FusedLora | None" = None) -> None:
        """dst[t, r] = (dst[t, r] +) sum_c W[r, c] x[t, c] for rows row_offset .. row_offset + n_rows.

        x is (n_tokens, cols) f32, dst is (n_tokens, dst_stride) with dst_stride = weight.rows by
        default. accumulate=True fuses the residual add (x += wo @ xb). From ``matmul_min_tokens``
        tokens on, the call runs as ``matmul`` (each weight block decoded once per tile of tokens).
        """
        if lora is not None and n_tokens != 1:
            raise BackendError(f"matvec {weight.name}: a fused LoRA delta takes one token, got {n_tokens}")
        if n_tokens >= self.matmul_min_tokens:
            return self.matmul(dst, weight, x, n_tokens, accumulate, row_offset, n_rows, dst_stride, scale)
        n_rows = weight.rows - row_offset if n_rows is None else n_rows
        key = (_bind_key(dst), id(weight), _bind_key(x), n_tokens, accumulate, row_offset, n_rows,
               dst_stride, scale, id(lora))
        launch = self._matvec_launches.get(key)
        if launch is None:
            launch = self._plan_matvec(dst, weight, x, n_tokens, accumulate, row_offset, n_rows, dst_stride,
                                       scale, lora)
            if len(self._matvec_launches) >= MAX_KEPT_LAUNCHES:
                self._matvec_launches.clear()
            self._matvec_launches[key] = launch
        for bind in launch.binds:
            bind()
        for part_buffer, prog, groups, uniforms in launch.dispatches:
            part_buffer.bind_to_storage_buffer(0)
            self._run(prog, *groups, **uniforms)
        self.barrier()

    def _plan_matvec(self, dst, weight: GLWeight, x, n_tokens: int, accumulate: bool, row_offset: int,
                     n_rows: int, dst_stride: int | None, scale: float, lora: "FusedLora | None") -> "Launch":
        """What ``matvec`` binds and dispatches for these arguments (see ``Launch``)."""
        if row_offset < 0 or n_rows < 0 or row_offset + n_rows > weight.rows:
            raise BackendError(f"matvec {weight.name}: rows {row_offset}..{row_offset + n_rows} outside 0..{weight.rows}")
        launch = Launch(keep=(dst, weight, x, lora))
        # rows per invocation; a weight of few rows (a LoRA factor A: 8-48 rows) gets one per
        # lane, else NR 8 would leave most of llvmpipe's 8-lane SIMD batch idle (~3x slower)
        nr = self.matvec_nr if weight.rows >= 2 * MATVEC_WG * self.matvec_nr else 1
        defines = dict(weight.defines, NR=nr, WG_SIZE=MATVEC_WG)
        if self.matvec_x_ubo and n_tokens == 1 and weight.cols * 4 <= MIN_UNIFORM_BLOCK_BYTES:
            # decode: x as a uniform block, read once per SIMD batch on llvmpipe (~1.3x, docs/gl_kernels.md)
            defines["X_VEC4S"] = weight.cols // 4
            launch.binds.append(partial(x.bind_to_uniform_block, 1, size=weight.cols * 4))
        else:
            launch.binds.append(partial(x.bind_to_storage_buffer, 1))
        lora_uniforms = {}
        if lora is not None:
            defines["LORA"] = 1
            launch.binds.append(partial(lora.pair.b_rows_q8.bind_to_storage_buffer, 3))
            if self.matvec_x_ubo and lora.ax.size >= LORA_AX_UBO_BYTES:
                defines["LORA_AX_VEC4S"] = LORA_AX_UBO_BYTES // 16  # read once per SIMD batch, like x
                launch.binds.append(partial(lora.ax.bind_to_uniform_block, 4, size=LORA_AX_UBO_BYTES))
            else:
                launch.binds.append(partial(lora.ax.bind_to_storage_buffer, 4))
            lora_uniforms = dict(lora_quads=lora.pair.b.cols // 4, lora_scale=float(lora.scale),
                                 lora_ax_quad0=lora.ax_offset // 4)
        prog = self.program("matvec.comp", **defines)
        launch.binds.append(partial(dst.bind_to_storage_buffer, 2))
        chunk = max(nr * MATVEC_WG, self.max_weights_per_dispatch // max(1, weight.cols * n_tokens))
        chunk = chunk // (nr * MATVEC_WG) * (nr * MATVEC_WG)
        for part, start, end in _row_slices(weight, row_offset, n_rows, chunk):
            uniforms = dict(row_begin=start - part.row0, row_end=end - part.row0, part_row0=part.row0,
                            cols=weight.cols, dst_stride=dst_stride or weight.rows, accumulate=int(accumulate),
                            scale=float(scale), **lora_uniforms)
            launch.dispatches.append((part.buffer, prog, (_groups(end - start, nr * MATVEC_WG), n_tokens), uniforms))
        return launch


    def matmul(self, dst, weight: GLWeight, x, n_tokens: int, accumulate: bool = False,
               row_offset: int = 0, n_rows: int | None = None, dst_stride: int | None = None,
               scale: float = 1.0) -> None:
        """``matvec`` for a batch of tokens (prefill): the same contract, another kernel.

        matmul.comp gives each invocation NR rows x TT tokens (``_matmul_plan``), so a decoded weight
        block serves MATMUL_TT tokens. Dispatches hold at most ``max_macs_per_dispatch``
        multiply-adds: split by rows first, then by tokens when even one row tile is too much.
        """
        n_rows = weight.rows - row_offset if n_rows is None else n_rows
        if row_offset < 0 or n_rows < 0 or row_offset + n_rows > weight.rows:
            raise BackendError(f"matmul {weight.name}: rows {row_offset}..{row_offset + n_rows} outside 0..{weight.rows}")
        if n_tokens < 1:
            raise BackendError(f"matmul {weight.name}: n_tokens must be at least 1, got {n_tokens}")
        tt, tok_step, row_step, x_ubo = self._matmul_plan(weight, n_tokens)
        x_bytes = weight.cols * 4  # one token's x
        nr = _matmul_nr(tt, self.software)
        defines = dict(weight.defines, NR=nr, TT=tt, WG_SIZE=MATMUL_WG)
        if x_ubo:
            # x as a uniform block, rebound per range of tokens: every lane reads the same x, and
            # llvmpipe loads uniform-block values once per SIMD batch, not once per lane (~2x)
            # declared at the block's full size, so every width shares one program per TT
            defines["X_VEC4S"] = self.x_ubo_bytes // 16
        else:
            x.bind_to_storage_buffer(1)
        prog = self.program("matmul.comp", **defines)
        dst.bind_to_storage_buffer(2)
        row_tile = nr * MATMUL_WG
        for part, start, end in _row_slices(weight, row_offset, n_rows, row_step):
            part.buffer.bind_to_storage_buffer(0)
            for t0 in range(0, n_tokens, tok_step):
                t1 = min(n_tokens, t0 + tok_step)
                if x_ubo:
                    # a BufferSlice (a segment's rows) binds from its own offset
                    buf, base = getattr(x, "buffer", x), getattr(x, "offset", 0)
                    buf.bind_to_uniform_block(1, offset=base + t0 * x_bytes, size=(t1 - t0) * x_bytes)
                self._run(prog, _groups(end - start, row_tile), _groups(t1 - t0, tt),
                          row_begin=start - part.row0, row_end=end - part.row0, part_row0=part.row0,
                          tok_begin=t0, tok_end=t1, cols=weight.cols, dst_stride=dst_stride or weight.rows,
                          accumulate=int(accumulate), scale=float(scale))
        self.barrier()

    def _matmul_plan(self, weight: GLWeight, n_tokens: int) -> tuple[int, int, int, bool]:
        """(token tile TT, tokens per dispatch, rows per dispatch, x as a uniform block?) for matmul.

        TT is MATMUL_SMALL_TT for a batch that small (a tile computes all TT tokens, so 4 NPCs'
        decode tokens on a 16-token tile would do 4x the work), else MATMUL_TT halved until TT
        tokens of x fit a uniform block (three programs per weight type in all, each compiled
        at warm-up: llvmpipe takes seconds per mat-mat program); a dispatch then holds as
        many row tiles x token tiles as ``max_macs_per_dispatch`` allows, tokens first (at most a
        uniform block's worth)."""
        x_bytes = weight.cols * 4
        tt = MATMUL_SMALL_TT if n_tokens <= MATMUL_SMALL_TT else MATMUL_TT
        while tt > MATMUL_SMALL_TT and tt * x_bytes > self.x_ubo_bytes:
            tt //= 2
        x_ubo = self.matvec_x_ubo and tt * x_bytes <= self.x_ubo_bytes
        row_tile = _matmul_nr(tt, self.software) * MATMUL_WG
        budget = max(1, self.max_macs_per_dispatch // (weight.cols * row_tile * tt))  # row tiles x token tiles
        tok_tiles = min(_groups(n_tokens, tt), budget)
        if x_ubo:
            tok_tiles = min(tok_tiles, self.x_ubo_bytes // x_bytes // tt)
        return tt, tok_tiles * tt, max(1, budget // tok_tiles) * row_tile, x_ubo

    def dispatch_shape(self, weight: GLWeight, n_tokens: int) -> tuple[int, int]:
        """(tokens, rows) of ``weight`` that one dispatch covers at this batch size, so a caller
        spreading a mat-vec over several ticks can slice it into single dispatches."""
        if n_tokens >= self.matmul_min_tokens:
            _, tokens, rows, _ = self._matmul_plan(weight, n_tokens)
            return min(tokens, n_tokens), rows
        tile = self.matvec_nr * MATVEC_WG
        tokens = max(1, min(n_tokens, self.max_weights_per_dispatch // (tile * weight.cols)))
        return tokens, max(tile, self.max_weights_per_dispatch // (weight.cols * tokens) // tile * tile)

    # -- LoRA -----------------------------------------------------------------------------------

    def lora(self, y, adapter: "LoraPair", x, scale: float, n_tokens: int = 1) -> None:
        """y += scale * B (A x): a low-rank adapter's delta on top of a base mat-vec's output.

        Two matvec dispatches through a scratch (n_tokens, rank) buffer; A and B are f32.
        """
        tmp = self.lora_ax(adapter, x, n_tokens)
        self.matvec(y, adapter.b, tmp, n_tokens=n_tokens, accumulate=True, scale=scale)

    def lora_ax(self, adapter: "LoraPair", x, n_tokens: int = 1):
        """A x of an adapter into a scratch (n_tokens, padded rank) buffer, which it returns: the
        first half of ``lora``, or what a fused ``matvec(..., lora=FusedLora(...))`` reads."""
        tmp = self.scratch("lora_ax", n_tokens * adapter.a.rows * 4)
        self.matvec(tmp, adapter.a, x, n_tokens=n_tokens)
        return tmp


@dataclass(frozen=True)
class FusedLora:
    """A LoRA delta for ``matvec`` to add in its epilogue: ``scale * B (A x)``, with A x (f32, the
    padded rank) already computed into ``ax`` from element ``ax_offset`` on (a multiple of 4)."""
    pair: "LoraPair"
    ax: object
    scale: float
    ax_offset: int = 0


@dataclass(frozen=True)
class LoraA:
    """LoRA A factors for the kernel that produces x (rmsnorm, attention, swiglu) to apply to it,
    for the fused deltas of the mat-vecs that read x: A x lands in the first words of ``work``
    (``Kernels.lora_work``), where their ``FusedLora.ax`` points (common/lora_a.glsl)."""
    rows_int8: object  # (rows, 1 + cols / 4) uint32: ``rows_int8`` of the stacked, padded A factors
    rows: int
    cols: int
    work: object


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


def padded_rank(rank: int) -> int:
    """A LoRA rank padded with zero rows to a multiple of 8 (kernels decode 8 weights at a time;
    a fused mat-vec reads A x in quads of this many)."""
    return (rank + 7) // 8 * 8


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


__all__ = ["FusedLora", "Kernels", "LoraA", "LoraPair"]
