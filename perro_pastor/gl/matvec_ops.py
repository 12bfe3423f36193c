"""Mat-vec launchers: the embedding lookup, ``matvec``/``matmul`` (every projection and the
classifier), and a LoRA delta as two mat-vecs. Part of ``Kernels`` (``gl/kernels.py``).

Long dispatches are split by rows (``max_weights_per_dispatch``) so no single submission stalls a
frame; the caller can also pass ``row_offset``/``n_rows`` to spread one mat-vec over several ticks
(``dispatch_shape`` says how big one dispatch is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from ..errors import BackendError
from .buffers import GLWeight
from .dispatcher import Dispatcher, n_groups
from .lora_factors import LORA_AX_UBO_BYTES, FusedLora, LoraPair

# Dispatch sizes. On a CPU rasterizer a dispatch runs inside glDispatchCompute, so its length is
# what a frame pays: 1 M weights of mat-vec is ~0.5-1 ms on 2-core llvmpipe, well under the 3 ms
# per dispatch that lets a scheduler hold a 4 ms budget (a real GPU: ``Dispatcher.dispatch_scale``
# times more).
DEFAULT_MAX_WEIGHTS_PER_DISPATCH = 1 << 20

EMBEDDING_WG = 32  # each invocation decodes 8 weights of the row
MATVEC_WG = 16
MATMUL_WG = 8
# Batched prefill (matmul.comp): rows per invocation, the largest token tile (smaller when TT
# tokens of x do not fit one uniform block), and the multiply-adds one dispatch may hold (~1.5 ms
# of the mat-mat on idle 2-core llvmpipe; docs/gl_kernels.md, prefill figures).
MATMUL_TT = 16
MATMUL_SMALL_TT = 4  # the token tile of batches of 2-4 tokens (NPCs decoding together)
DEFAULT_MAX_MACS_PER_DISPATCH = 2 << 20
MATMUL_MIN_TOKENS = 2  # matvec routes n_tokens >= this to matmul
# matmul_lanes.comp (the mat-mat on GPUs): ROWS rows x LANES invocations a work group, TT tokens
LANES_WG, LANES_ROWS, LANES_TT = 64, 8, 16
MAX_X_UBO_BYTES = 65536  # llvmpipe's GL_MAX_UNIFORM_BLOCK_SIZE; capped by the context's own
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


# Decode mat-vecs repeat the same few hundred calls every token; their resolved launches are kept
# (``MatvecOps.matvec``), up to this many (then forgotten all at once and made again as needed).
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


class MatvecOps:
    """The mat-vec launchers of one ``Kernels``, with their dispatch sizes."""

    def __init__(self, gpu: Dispatcher, *, max_weights_per_dispatch: int | None = None,
                 matvec_rows_per_invocation: int = 8, matvec_x_ubo: bool = True,
                 max_macs_per_dispatch: int | None = None, matmul_min_tokens: int = MATMUL_MIN_TOKENS,
                 matmul_lanes: bool | None = None) -> None:
        self.gpu = gpu
        # batches on a GPU: matmul_lanes.comp, a whole mat-mat per dispatch (None: on a GPU only)
        self.matmul_lanes = not gpu.software if matmul_lanes is None else matmul_lanes
        self.max_weights_per_dispatch = max_weights_per_dispatch or DEFAULT_MAX_WEIGHTS_PER_DISPATCH * gpu.dispatch_scale
        self.matvec_nr = matvec_rows_per_invocation
        self.matvec_x_ubo = matvec_x_ubo  # off: x always from an SSBO (for benchmarks)
        self.max_macs_per_dispatch = max_macs_per_dispatch or DEFAULT_MAX_MACS_PER_DISPATCH * gpu.dispatch_scale
        self.matmul_min_tokens = matmul_min_tokens  # a huge value keeps prefill on matvec.comp
        self.x_ubo_bytes = min(MAX_X_UBO_BYTES, int(gpu.ctx.info.get("GL_MAX_UNIFORM_BLOCK_SIZE", 0) or 0))
        self._matvec_launches: dict[tuple, Launch] = {}

    def release(self) -> None:
        """Forget the kept launches (they hold the buffers they bind)."""
        self._matvec_launches.clear()

    # -- embedding ------------------------------------------------------------------------------

    def embedding(self, out, weight: GLWeight, tokens, n_tokens: int = 1, token_offset: int = 0,
                  scale: float = 1.0) -> None:
        """out[t, :] = row ``tokens[token_offset + t]`` of the embedding table, dequantized (times
        ``scale``: Gemma's sqrt(dim)).

        The ids are read on the GPU, so a token sampled by the previous step never visits the CPU.
        A table split across buffers takes one dispatch per part; each writes the tokens it holds.
        """
        prog = self.gpu.program("embedding.comp", WG_SIZE=EMBEDDING_WG, **weight.defines)
        self.gpu.bind(tokens, 1)
        self.gpu.bind(out, 2)
        for part in weight.parts:
            self.gpu.bind(part.buffer, 0)
            self.gpu.run(prog, n_groups(weight.cols // 8, EMBEDDING_WG), n_tokens, dim=weight.cols, vocab=weight.rows,
                         token_offset=token_offset, part_row0=part.row0, part_rows=part.n_rows, scale=scale)
        self.gpu.barrier()

    # -- matvec ---------------------------------------------------------------------------------

    def matvec(self, dst, weight: GLWeight, x, n_tokens: int = 1, accumulate: bool = False,
               row_offset: int = 0, n_rows: int | None = None, dst_stride: int | None = None,
               scale: float = 1.0, lora: FusedLora | None = None) -> None:
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
            self.gpu.call(bind)
        for part_buffer, prog, groups, uniforms in launch.dispatches:
            self.gpu.bind(part_buffer, 0)
            self.gpu.run(prog, *groups, **uniforms)
        self.gpu.barrier()

    def _plan_matvec(self, dst, weight: GLWeight, x, n_tokens: int, accumulate: bool, row_offset: int,
                     n_rows: int, dst_stride: int | None, scale: float, lora: FusedLora | None) -> Launch:
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
        prog = self.gpu.program("matvec.comp", **defines)
        launch.binds.append(partial(dst.bind_to_storage_buffer, 2))
        chunk = max(nr * MATVEC_WG, self.max_weights_per_dispatch // max(1, weight.cols * n_tokens))
        chunk = chunk // (nr * MATVEC_WG) * (nr * MATVEC_WG)
        for part, start, end in _row_slices(weight, row_offset, n_rows, chunk):
            uniforms = dict(row_begin=start - part.row0, row_end=end - part.row0, part_row0=part.row0,
                            cols=weight.cols, dst_stride=dst_stride or weight.rows, accumulate=int(accumulate),
                            scale=float(scale), **lora_uniforms)
            launch.dispatches.append((part.buffer, prog, (n_groups(end - start, nr * MATVEC_WG), n_tokens), uniforms))
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
        if self._lanes_fit(weight) and row_offset % LANES_ROWS == 0:
            return self._matmul_lanes(dst, weight, x, n_tokens, accumulate, row_offset, n_rows, dst_stride, scale)
        tt, tok_step, row_step, x_ubo = self._matmul_plan(weight, n_tokens)
        x_bytes = weight.cols * 4  # one token's x
        nr = _matmul_nr(tt, self.gpu.software)
        defines = dict(weight.defines, NR=nr, TT=tt, WG_SIZE=MATMUL_WG)
        if x_ubo:
            # x as a uniform block, rebound per range of tokens: every lane reads the same x, and
            # llvmpipe loads uniform-block values once per SIMD batch, not once per lane (~2x)
            # declared at the block's full size, so every width shares one program per TT
            defines["X_VEC4S"] = self.x_ubo_bytes // 16
        else:
            self.gpu.bind(x, 1)
        prog = self.gpu.program("matmul.comp", **defines)
        self.gpu.bind(dst, 2)
        row_tile = nr * MATMUL_WG
        for part, start, end in _row_slices(weight, row_offset, n_rows, row_step):
            self.gpu.bind(part.buffer, 0)
            for t0 in range(0, n_tokens, tok_step):
                t1 = min(n_tokens, t0 + tok_step)
                if x_ubo:
                    # a BufferSlice (a segment's rows) binds from its own offset
                    buf, base = getattr(x, "buffer", x), getattr(x, "offset", 0)
                    self.gpu.bind_ubo(buf, 1, offset=base + t0 * x_bytes, size=(t1 - t0) * x_bytes)
                self.gpu.run(prog, n_groups(end - start, row_tile), n_groups(t1 - t0, tt),
                             row_begin=start - part.row0, row_end=end - part.row0, part_row0=part.row0,
                             tok_begin=t0, tok_end=t1, cols=weight.cols, dst_stride=dst_stride or weight.rows,
                             accumulate=int(accumulate), scale=float(scale))
        self.gpu.barrier()

    def _lanes_fit(self, weight: GLWeight) -> bool:
        """Whether a mat-mat of ``weight`` runs as matmul_lanes.comp (on GPUs; one buffer part)."""
        return self.matmul_lanes and len(weight.parts) == 1 and weight.cols % 8 == 0

    def _matmul_lanes(self, dst, weight: GLWeight, x, n_tokens: int, accumulate: bool, row_offset: int,
                      n_rows: int, dst_stride: int | None, scale: float) -> None:
        """``matmul`` through matmul_lanes.comp: rows row_offset .. + n_rows, every token, one dispatch."""
        prog = self.gpu.program("matmul_lanes.comp", **weight.defines, WG_SIZE=LANES_WG, ROWS=LANES_ROWS,
                                TT=LANES_TT)
        self.gpu.bind(weight.parts[0].buffer, 0)
        self.gpu.bind(x, 1)
        self.gpu.bind(dst, 2)
        self.gpu.run(prog, n_groups(n_rows, LANES_ROWS), n_groups(n_tokens, LANES_TT),
                     rows=row_offset + n_rows, cols=weight.cols, n_tokens=n_tokens,
                     dst_stride=dst_stride or weight.rows, accumulate=int(accumulate), scale=float(scale),
                     tile0=row_offset // LANES_ROWS, tok_tile0=0)
        self.gpu.barrier()

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
        row_tile = _matmul_nr(tt, self.gpu.software) * MATMUL_WG
        budget = max(1, self.max_macs_per_dispatch // (weight.cols * row_tile * tt))  # row tiles x token tiles
        tok_tiles = min(n_groups(n_tokens, tt), budget)
        if x_ubo:
            tok_tiles = min(tok_tiles, self.x_ubo_bytes // x_bytes // tt)
        return tt, tok_tiles * tt, max(1, budget // tok_tiles) * row_tile, x_ubo

    def dispatch_shape(self, weight: GLWeight, n_tokens: int) -> tuple[int, int]:
        """(tokens, rows) of ``weight`` that one dispatch covers at this batch size, so a caller
        spreading a mat-vec over several ticks can slice it into single dispatches."""
        if n_tokens >= self.matmul_min_tokens:
            if self._lanes_fit(weight):
                return n_tokens, weight.rows  # (a GPU: one dispatch)
            _, tokens, rows, _ = self._matmul_plan(weight, n_tokens)
            return min(tokens, n_tokens), rows
        tile = self.matvec_nr * MATVEC_WG
        tokens = max(1, min(n_tokens, self.max_weights_per_dispatch // (tile * weight.cols)))
        return tokens, max(tile, self.max_weights_per_dispatch // (weight.cols * tokens) // tile * tile)

    # -- LoRA -----------------------------------------------------------------------------------

    def lora(self, y, adapter: LoraPair, x, scale: float, n_tokens: int = 1) -> None:
        """y += scale * B (A x): a low-rank adapter's delta on top of a base mat-vec's output.

        Two matvec dispatches through a scratch (n_tokens, rank) buffer; A and B are f32.
        """
        tmp = self.lora_ax(adapter, x, n_tokens)
        self.matvec(y, adapter.b, tmp, n_tokens=n_tokens, accumulate=True, scale=scale)

    def lora_ax(self, adapter: LoraPair, x, n_tokens: int = 1):
        """A x of an adapter into a scratch (n_tokens, padded rank) buffer, which it returns: the
        first half of ``lora``, or what a fused ``matvec(..., lora=FusedLora(...))`` reads."""
        tmp = self.gpu.scratch("lora_ax", n_tokens * adapter.a.rows * 4)
        self.matvec(tmp, adapter.a, x, n_tokens=n_tokens)
        return tmp
