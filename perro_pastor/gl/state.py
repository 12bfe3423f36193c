"""What the GL forward pass keeps between dispatches: KV caches, scratch activations, buffer views,
uploaded LoRA pairs, and per-dispatch timing.

Everything here lives on the GPU; the host only holds handles. ``forward.py`` narrates the math
and uses these pieces by llama2.c names (``x xb q k v hb hb2 logits``).
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..config import Config
from ..errors import BackendError
from .context import GLContext
from .kernels import Kernels, LoraPair, a_rows_int8, padded_rank

GL_SHADER_STORAGE_BUFFER_OFFSET_ALIGNMENT = 0x90DF


# -----------------------------------------------------------------------------
# buffer views

class BufferSlice:
    """Bytes ``offset .. offset + size`` of a buffer, bindable wherever a launcher binds a buffer.

    Launchers call ``buf.bind_to_storage_buffer(binding)``; a slice binds only its range, so a
    kernel that starts at token 0 works on a segment that starts at token ``a`` of a batch. The
    offset must be a multiple of GL_SHADER_STORAGE_BUFFER_OFFSET_ALIGNMENT (see ``Scratch``)."""

    def __init__(self, buffer, offset: int, size: int):
        self.buffer, self.offset, self.size = buffer, offset, size

    def bind_to_storage_buffer(self, binding: int = 0) -> None:
        self.buffer.bind_to_storage_buffer(binding, offset=self.offset, size=self.size)

    def bind_to_uniform_block(self, binding: int = 0, size: int = -1) -> None:
        """The decode mat-vec reads x as a uniform block (docs/gl_kernels.md)."""
        size = self.size if size < 0 else min(size, self.size)
        self.buffer.bind_to_uniform_block(binding, offset=self.offset, size=size)


def buffer_offset_alignment(ctx) -> int:
    """The alignment a bound buffer range's offset needs, as storage or uniform block (16 and
    16 on llvmpipe); 256, the largest seen, where the driver does not say."""
    ubo = int(ctx.info.get("GL_UNIFORM_BUFFER_OFFSET_ALIGNMENT", 0) or 256)
    try:
        from OpenGL import GL  # noqa: PLC0415

        ssbo = int(GL.glGetIntegerv(GL_SHADER_STORAGE_BUFFER_OFFSET_ALIGNMENT)) or 256
    except Exception:
        ssbo = 256
    return max(ubo, ssbo)


# -----------------------------------------------------------------------------
# KV cache

class GlKVCache:
    """Keys and values of every layer for one sequence, on the GPU.

    One buffer per layer and kind, each (n_ctx, n_kv_heads, head_size) in f16 (packed pairs, as
    the rope/attention kernels read them with KV_F16=1) or f32. A buffer per layer keeps each well
    under GL_MAX_SHADER_STORAGE_BLOCK_SIZE even for long contexts."""

    def __init__(self, glctx: GLContext, cfg: Config, n_ctx: int, f16: bool):
        self.n_ctx, self.f16 = n_ctx, f16
        self.dtype = np.dtype(np.float16 if f16 else np.float32)
        self.row_shape = (cfg.n_kv_heads, cfg.head_size)
        nbytes = max(16, n_ctx * cfg.kv_dim * self.dtype.itemsize)
        self.key_cache = [glctx.ctx.buffer(reserve=nbytes) for _ in range(cfg.n_layers)]
        self.value_cache = [glctx.ctx.buffer(reserve=nbytes) for _ in range(cfg.n_layers)]

    @property
    def n_layers(self) -> int:
        return len(self.key_cache)

    def read(self, kind: list, layer: int, n_tokens: int) -> np.ndarray:
        """Rows 0..n_tokens-1 of one layer: (n_tokens, n_kv_heads, head_size) in the cache's dtype."""
        size = n_tokens * int(np.prod(self.row_shape)) * self.dtype.itemsize
        raw = kind[layer].read(size=size) if size else b""
        return np.frombuffer(raw, dtype=self.dtype).reshape((n_tokens,) + self.row_shape)

    def release(self) -> None:
        for buf in self.key_cache + self.value_cache:
            buf.release()
        self.key_cache, self.value_cache = [], []


# -----------------------------------------------------------------------------
# scratch activations

class Scratch:
    """Activation buffers for up to ``capacity`` tokens, llama2.c's RunState on the GPU.

    x (T, dim) residual stream; xb (T, dim) normed input / attention output; q (T, dim);
    k, v (T, kv_dim); hb, hb2 (T, hidden_dim); xl (S, dim) last rows; logits (S or T, vocab);
    tokens (T,) int32 ids the embedding reads; next_token, the id the GPU argmax picks.
    Grown (never shrunk) when a bigger batch comes."""

    def __init__(self, glctx: GLContext, cfg: Config):
        self.glctx, self.cfg, self.capacity = glctx, cfg, 0
        self.widths = dict(x=cfg.dim, xb=cfg.dim, q=cfg.dim, k=cfg.kv_dim, v=cfg.kv_dim,
                           hb=cfg.hidden_dim, hb2=cfg.hidden_dim, xl=cfg.dim, logits=cfg.vocab_size,
                           tokens=1, next_token=1)
        self.buffers: dict[str, object] = {}

    def ensure(self, n_tokens: int) -> None:
        if n_tokens <= self.capacity:
            return
        capacity = max(n_tokens, 2 * self.capacity, 8)
        for name, width in self.widths.items():
            old = self.buffers.get(name)
            if old is not None:
                old.release()
            self.buffers[name] = self.glctx.ctx.buffer(reserve=capacity * width * 4)
        self.capacity = capacity

    def __getattr__(self, name: str):
        try:
            return self.__dict__["buffers"][name]
        except KeyError:
            raise AttributeError(name) from None

    def rows(self, name: str, a: int, b: int) -> BufferSlice:
        """Token rows a..b-1 of buffer ``name`` as a bindable view."""
        row = self.widths[name] * 4
        return BufferSlice(self.buffers[name], a * row, max(4, (b - a) * row))

    def read(self, name: str, n_rows: int, shape: tuple = ()) -> np.ndarray:
        """The first ``n_rows`` rows, read back (blocks: traces and logits only)."""
        width = self.widths[name]
        raw = self.buffers[name].read(size=n_rows * width * 4)
        dtype = np.int32 if name in ("tokens", "next_token") else np.float32
        return np.frombuffer(raw, dtype=dtype).reshape((n_rows,) + (shape or (width,))).copy()

    def release(self) -> None:
        for buf in self.buffers.values():
            buf.release()
        self.buffers, self.capacity = {}, 0


# -----------------------------------------------------------------------------
# LoRA pairs, uploaded once per factor arrays

@dataclass
class StackedA:
    """``LoraCache.stacked_a``: A factors sharing an input, as one buffer of int8 rows."""
    rows_int8: object
    rows: int
    cols: int
    offsets: list[int]  # where each factor's rows (and its A x) start

    def release(self) -> None:
        self.rows_int8.release()


class LoraCache:
    """Uploaded ``LoraPair``s keyed by the identity of the adapter's A array.

    Adapters are frozen dataclasses holding a dict (unhashable) and ``with_scale`` copies share
    their factors, so the arrays, not the adapter objects, are the key. An entry holds a weak
    reference to A; pairs whose A was garbage-collected are released on the next lookup (on the
    GL thread, never from a finalizer)."""

    def __init__(self, glctx: GLContext):
        self.glctx = glctx
        self.pairs: dict[int, tuple[weakref.ref, LoraPair]] = {}
        self.stacks: dict[tuple, tuple[weakref.ref, StackedA]] = {}

    def pair(self, a: np.ndarray, b: np.ndarray, name: str) -> LoraPair:
        entry = self.pairs.get(id(a))
        if entry is not None and entry[0]() is a:
            return entry[1]
        self.purge()
        pair = LoraPair(self.glctx, np.asarray(a, np.float32), np.asarray(b, np.float32), name)
        self.pairs[id(a)] = (weakref.ref(a), pair)
        return pair

    def stacked_a(self, arrays: list[np.ndarray]) -> "StackedA":
        """The A factors of projections that share an input, each padded to a multiple of 8 rows
        (a ``LoraPair``'s padded rank) and stacked, as int8 rows with a scale each
        (``a_rows_int8``: the kernel that makes the input computes every A x from them,
        common/lora_a.glsl); cached like the pairs (weakly, by the first A; keyed by all of them).
        The rounding (half a step of 1/127 of a row's largest value) is far below what LoRA
        factors carry; the width must be a multiple of 16."""
        key = tuple(id(a) for a in arrays)
        entry = self.stacks.get(key)
        if entry is not None and entry[0]() is arrays[0]:
            return entry[1]
        self.purge()
        padded = [np.zeros((padded_rank(len(a)), a.shape[1]), np.float32) for a in arrays]
        for p, a in zip(padded, arrays):
            p[:len(a)] = a
        offsets = np.cumsum([0] + [len(p) for p in padded[:-1]]).tolist()
        stacked = np.concatenate(padded)
        rows, cols = stacked.shape
        if cols % 16:
            raise BackendError(f"stacked LoRA A: width {cols} is not a multiple of 16")
        upload = StackedA(self.glctx.ctx.buffer(a_rows_int8(stacked).tobytes()), rows, cols, offsets)
        self.stacks[key] = (weakref.ref(arrays[0]), upload)
        return upload

    def release(self) -> None:
        self._drop(dead_only=False)

    def purge(self) -> None:
        """Release the uploads whose first A factor is gone (its adapter was dropped)."""
        self._drop(dead_only=True)

    def _drop(self, dead_only: bool) -> None:
        for cache in (self.pairs, self.stacks):  # entries: (weakref to the first A, upload, ...)
            for key, entry in list(cache.items()):
                if not dead_only or entry[0]() is None:
                    entry[1].release()
                    del cache[key]


# -----------------------------------------------------------------------------
# dispatch timing

DURATIONS_KEPT = 200_000


@dataclass
class DispatchStats:
    """Per-dispatch wall time. On a synchronous driver (llvmpipe runs the work inside
    glDispatchCompute) this is the kernel's time; on a real GPU it is only the submission."""
    count: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    by_program: dict[str, float] = field(default_factory=dict)
    # the latest dispatches' times, for percentiles (bounded: a game runs for hours)
    durations: deque = field(default_factory=lambda: deque(maxlen=DURATIONS_KEPT))

    def reset(self) -> None:
        self.count, self.seconds, self.max_seconds = 0, 0.0, 0.0
        self.by_program.clear()
        self.durations.clear()

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.durations, q)) * 1000 if self.durations else 0.0


class TimedKernels(Kernels):
    """``Kernels`` that times every dispatch (two perf_counter calls: negligible next to the
    ~20 us a dispatch costs) and attributes it to its shader, so ``bench_stats`` can split
    mat-vec time from everything else."""

    def __init__(self, glctx: GLContext, **kwargs):
        super().__init__(glctx, **kwargs)
        self.timing = DispatchStats()
        self._names: dict[int, str] = {}

    def program(self, name: str, **defines: object):
        prog = super().program(name, **defines)
        self._names[id(prog)] = name
        return prog

    def _run(self, prog, gx: int, gy: int = 1, gz: int = 1, **uniforms: object) -> None:
        start = time.perf_counter()
        super()._run(prog, gx, gy, gz, **uniforms)
        dt = time.perf_counter() - start
        t = self.timing
        t.count += 1
        t.seconds += dt
        t.max_seconds = max(t.max_seconds, dt)
        t.durations.append(dt)
        name = self._names.get(id(prog), "?")
        t.by_program[name] = t.by_program.get(name, 0.0) + dt
