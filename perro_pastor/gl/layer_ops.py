"""Launchers for the per-layer ops other than mat-vec: rmsnorm, rope, attention, swiglu, add.

Part of ``Kernels`` (``gl/kernels.py``): every dispatch goes through the shared ``Dispatcher``.
Buffers are moderngl buffers (or ``BufferSlice``s); shapes are explicit.
"""

from __future__ import annotations

import math

from ..errors import BackendError
from .dispatcher import Dispatcher, n_groups
from .lora_factors import LoraA, bind_lora_a
from .shader_loader import MAX_HEAD_SIZE

RMSNORM_WG = SWIGLU_WG = ADD_WG = 64
ROPE_WG = 32  # one invocation per pair of features of a head
# With a LoRA A, rmsnorm and swiglu cut their row into this many columns at most per work group
# (their shader's LORA_CHUNK; multiples of 16): few groups, so few partial sums and little of the
# per-group cost, yet two for the default model, one per llvmpipe thread (docs/lora.md)
RMSNORM_LORA_CHUNK, SWIGLU_LORA_CHUNK = 320, 768


def lora_chunk(n: int, most: int) -> int:
    """Columns per work group for n columns, at most ``most``, balanced, a multiple of 16."""
    return n_groups(n_groups(n, n_groups(n, most)), 16) * 16


class LayerOps:
    """The per-layer launchers of one ``Kernels``."""

    def __init__(self, gpu: Dispatcher) -> None:
        self.gpu = gpu

    # -- rmsnorm --------------------------------------------------------------------------------

    def rmsnorm(self, out, x, weight, dim: int, eps: float, n_tokens: int = 1,
                lora_a: LoraA | None = None) -> None:
        """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, for each of n_tokens rows of dim.

        With ``lora_a`` (a ``LoraA``; one token) also A out, for the fused LoRA deltas of the
        mat-vecs that read out: the row is then cut into chunks of at most RMSNORM_LORA_CHUNK
        columns, one work group each, and each adds its chunk's part (common/lora_a.glsl)."""
        prog = self.gpu.program("rmsnorm.comp", WG_SIZE=RMSNORM_WG, LORA_CHUNK=RMSNORM_LORA_CHUNK)
        self.gpu.bind(x, 0)
        self.gpu.bind(weight, 1)
        self.gpu.bind(out, 2)
        chunk = dim if lora_a is None else lora_chunk(dim, RMSNORM_LORA_CHUNK)
        n_chunks = n_groups(dim, chunk)
        if lora_a is not None and (n_tokens != 1 or lora_a.cols != dim):
            raise BackendError(f"rmsnorm: a LoRA A of width {lora_a.cols} takes one token of {dim}, got {n_tokens}")
        lora = bind_lora_a(self.gpu, lora_a, 3, n_chunks)
        self.gpu.run(prog, n_chunks, n_tokens, dim=dim, chunk=chunk, eps=eps, **lora)
        self.gpu.barrier()

    # -- elementwise ----------------------------------------------------------------------------

    def swiglu(self, out, h1, h3, n: int, lora_a: LoraA | None = None, gelu: bool = False) -> None:
        """out = silu(h1) * h3 over n elements (the FFN gate: hb = silu(w1 x) * w3 x), or
        gelu(h1) * h3 with ``gelu`` (GeGLU, Gemma); with ``lora_a`` (one token's n elements)
        also A out, for a fused LoRA delta on w2."""
        prog = self.gpu.program("swiglu.comp", WG_SIZE=SWIGLU_WG, LORA_CHUNK=SWIGLU_LORA_CHUNK, GELU=int(gelu))
        self.gpu.bind(h1, 0)
        self.gpu.bind(h3, 1)
        self.gpu.bind(out, 2)
        if lora_a is not None and lora_a.cols != n:
            raise BackendError(f"swiglu: a LoRA A of width {lora_a.cols} does not fit {n} elements")
        chunk = SWIGLU_WG if lora_a is None else lora_chunk(n, SWIGLU_LORA_CHUNK)
        lora = bind_lora_a(self.gpu, lora_a, 3, n_groups(n, chunk))
        self.gpu.run(prog, n_groups(n, chunk), n=n, chunk=chunk, **lora)
        self.gpu.barrier()

    def add(self, dst, src, n: int, width: int = 0) -> None:
        """dst += src over n elements (the residual connection); with ``width``, src is one row
        of that width added to every row of dst (a bias)."""
        prog = self.gpu.program("add.comp", WG_SIZE=ADD_WG, BROADCAST=int(bool(width)))
        self.gpu.bind(src, 0)
        self.gpu.bind(dst, 1)
        self.gpu.run(prog, n_groups(n, ADD_WG), n=n, **({"width": width} if width else {}))
        self.gpu.barrier()

    # -- rope -----------------------------------------------------------------------------------

    def rope(self, q, k, inv_freq, *, n_heads: int, n_kv_heads: int, head_size: int, n_rot: int | None = None,
             n_tokens: int = 1, pos0: int = 0, positions=None,
             v=None, k_cache=None, v_cache=None, cache_base: int = 0, seq_len: int = 0,
             kv_f16: bool = False) -> None:
        """Rotate q (T, n_heads, hs) and k (T, n_kv_heads, hs) in place by position.

        Positions are pos0 + t, or read from the int32 buffer ``positions``. With ``k_cache`` and
        ``v_cache`` (element offset ``cache_base``, ``seq_len`` rows) the rotated k and v are also
        stored at row ``pos`` of this layer's cache, in f16 when ``kv_f16``.
        """
        if head_size % 2:
            raise BackendError(f"rope: head_size {head_size} must be even")
        n_rot = head_size // 2 if n_rot is None else n_rot
        write_cache = k_cache is not None
        prog = self.gpu.program("rope.comp", POS_BUFFER=int(positions is not None), WRITE_CACHE=int(write_cache),
                                KV_F16=int(kv_f16), WG_SIZE=ROPE_WG)
        self.gpu.bind(q, 0)
        self.gpu.bind(k, 1)
        self.gpu.bind(inv_freq, 3)
        uniforms: dict[str, object] = dict(head_size=head_size, n_heads=n_heads, n_kv_heads=n_kv_heads, n_rot=n_rot)
        if positions is not None:
            self.gpu.bind(positions, 4)
        else:
            uniforms["pos0"] = pos0
        slots = n_heads + n_kv_heads
        if write_cache:
            if v is None or v_cache is None:
                raise BackendError("rope: writing the KV cache needs v, k_cache and v_cache")
            if cache_base % 2:
                raise BackendError(f"rope: cache_base {cache_base} must be even")
            self.gpu.bind(v, 2)
            self.gpu.bind(k_cache, 5)
            self.gpu.bind(v_cache, 6)
            uniforms.update(cache_base=cache_base, seq_len=seq_len)
            slots += n_kv_heads
        self.gpu.run(prog, n_groups(head_size // 2, ROPE_WG), slots, n_tokens, **uniforms)
        self.gpu.barrier()

    # -- attention ------------------------------------------------------------------------------

    def attention(self, out, q, k_cache, v_cache, *, n_heads: int, n_kv_heads: int, head_size: int,
                  pos0: int, seq_len: int, n_tokens: int = 1, cache_base: int = 0,
                  sliding_window: int = 0, kv_f16: bool = False, att=None, lora_a: LoraA | None = None,
                  softcap: float = 0.0, query_scale: float = 1.0, positions=None) -> None:
        """out[t, h] = softmax(q[t, h] . K / sqrt(hs)) V over cache rows 0..pos0+t (causal, GQA);
        with ``softcap`` (Gemma 2) the scores become softcap * tanh(score / softcap) first;
        ``query_scale`` multiplies the scores too (Phi-3 LongRoPE, Gemma 27B). ``positions``: an
        int32 buffer of the queries' positions read on the GPU (then ``pos0`` is only checked).

        ``att`` is scratch of at least n_heads * n_tokens * seq_len floats; one is kept per
        size when not given. With ``lora_a`` (one token, head_size a multiple of 16) also A out,
        for a fused LoRA delta on wo: each head's work group adds its part.
        """
        if n_heads % n_kv_heads:
            raise BackendError(f"attention: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
        if head_size % 2 or head_size > MAX_HEAD_SIZE:
            raise BackendError(f"attention: head_size {head_size} must be even and <= {MAX_HEAD_SIZE}")
        if pos0 + n_tokens > seq_len:
            raise BackendError(f"attention: positions up to {pos0 + n_tokens - 1} exceed seq_len {seq_len}")
        if cache_base % 2:
            raise BackendError(f"attention: cache_base {cache_base} must be even")
        if att is None:
            att = self.gpu.scratch("att", n_heads * n_tokens * seq_len * 4)
        if lora_a is not None and (n_tokens != 1 or head_size % 16 or lora_a.cols != n_heads * head_size):
            raise BackendError(f"attention: a LoRA A of width {lora_a.cols} takes one token of {n_heads} heads "
                               f"of {head_size} (a multiple of 16), got {n_tokens}")
        prog = self.gpu.program("attention.comp", KV_F16=int(kv_f16), SOFTCAP=int(bool(softcap)),
                                POS_BUFFER=int(positions is not None))
        self.gpu.bind(q, 0)
        self.gpu.bind(k_cache, 1)
        self.gpu.bind(v_cache, 2)
        self.gpu.bind(att, 3)
        self.gpu.bind(out, 4)
        lora = bind_lora_a(self.gpu, lora_a, 5, n_heads)
        where = {"pos0": pos0}
        if positions is not None:
            self.gpu.bind(positions, 7)
            where = {}
        self.gpu.run(prog, n_heads, n_tokens, head_size=head_size, n_heads=n_heads, n_kv_heads=n_kv_heads,
                     **where, seq_len=seq_len, cache_base=cache_base, sliding_window=sliding_window,
                     score_scale=query_scale / math.sqrt(head_size), **lora,
                     **({"softcap": softcap} if softcap else {}))
        self.gpu.barrier()
