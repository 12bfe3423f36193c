"""What the GL forward pass keeps between dispatches: KV caches, scratch activations and buffer
views.

Everything here lives on the GPU; the host only holds handles. ``forward.py`` narrates the math
and uses these pieces by llama2.c names (``x xb q k v hb hb2 logits``).
"""

from __future__ import annotations

import weakref

import numpy as np

from ..config import Config
from .context import GLContext

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
        # a cache dropped without ``release`` (a session garbage-collected with its scheduler)
        # hands its buffers to the context, which frees them at its next pass
        self._on_collect = weakref.finalize(self, glctx.release_later, self.key_cache + self.value_cache)
        self.plan = None  # this cache's recorded decode step (gl/decode_plan.py), replayed each token

    @property
    def n_layers(self) -> int:
        return len(self.key_cache)

    def read(self, kind: list, layer: int, n_tokens: int) -> np.ndarray:
        """Rows 0..n_tokens-1 of one layer: (n_tokens, n_kv_heads, head_size) in the cache's dtype."""
        size = n_tokens * int(np.prod(self.row_shape)) * self.dtype.itemsize
        raw = kind[layer].read(size=size) if size else b""
        return np.frombuffer(raw, dtype=self.dtype).reshape((n_tokens,) + self.row_shape)

    def export(self, n_tokens: int) -> np.ndarray:
        """Rows 0..n_tokens-1: (2, n_layers, n_tokens, n_kv_heads, head_size), keys then values, in
        the cache's dtype (f16 or f32), the format of ``CpuTransformer.export_kv``."""
        if not 0 <= n_tokens <= self.n_ctx:
            raise ValueError(f"cannot export {n_tokens} KV rows from a context of {self.n_ctx}")
        return np.stack([np.stack([self.read(kind, l, n_tokens) for l in range(self.n_layers)])
                         for kind in (self.key_cache, self.value_cache)])

    def import_rows(self, array: np.ndarray) -> None:
        """Write rows 0..n-1 from an ``export`` array (any float dtype, from any backend)."""
        if array.ndim != 5 or array.shape[0] != 2 or array.shape[1] != self.n_layers \
                or array.shape[2] > self.n_ctx or array.shape[3:] != self.row_shape:
            raise ValueError(f"KV array of shape {array.shape} does not fit a cache of shape "
                             f"{(self.n_layers, self.n_ctx) + self.row_shape}")
        data = np.ascontiguousarray(array, dtype=self.dtype)
        if array.shape[2]:
            for l in range(self.n_layers):
                self.key_cache[l].write(data[0, l].tobytes())
                self.value_cache[l].write(data[1, l].tobytes())

    def release(self) -> None:
        self._on_collect.detach()
        self.plan = None
        for buf in self.key_cache + self.value_cache:
            buf.release()
        self.key_cache, self.value_cache = [], []


# -----------------------------------------------------------------------------
# scratch activations

class Scratch:
    """Activation buffers for up to ``capacity`` tokens, llama2.c's RunState on the GPU.

    x (T, dim) residual stream; xb (T, dim) normed input / attention output; q (T, dim);
    k, v (T, kv_dim); hb, hb2 (T, hidden_dim); xl (S, dim) last rows; logits (S or T, vocab);
    tokens (T,) int32 ids the embedding reads; next_token, the id the GPU argmax picks;
    positions (T,) int32, a one-token pass's position (rope and attention read it).
    Grown (never shrunk) when a bigger batch comes."""

    def __init__(self, glctx: GLContext, cfg: Config):
        self.glctx, self.cfg, self.capacity = glctx, cfg, 0
        # xb holds the normed input (dim) and the attention output (q_dim: wider for some qwen3)
        self.widths = dict(x=cfg.dim, xb=max(cfg.dim, cfg.q_dim), q=cfg.q_dim, k=cfg.kv_dim, v=cfg.kv_dim,
                           hb=cfg.hidden_dim, hb2=cfg.hidden_dim, xl=cfg.dim, logits=cfg.vocab_size,
                           tokens=1, next_token=1, positions=1)
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
        dtype = np.int32 if name in ("tokens", "next_token", "positions") else np.float32
        return np.frombuffer(raw, dtype=dtype).reshape((n_rows,) + (shape or (width,))).copy()

    def release(self) -> None:
        for buf in self.buffers.values():
            buf.release()
        self.buffers, self.capacity = {}, 0
