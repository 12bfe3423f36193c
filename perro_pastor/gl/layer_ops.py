"""Launchers for the per-layer ops other than mat-vec: rmsnorm, rope, attention, swiglu, add.

A mixin of ``Kernels`` (it uses ``self.program``, ``self._run`` and ``self.barrier``), kept in its
own module so each launcher file stays short. Buffers are moderngl buffers; shapes are explicit.
"""

from __future__ import annotations

from ..errors import BackendError

MAX_HEAD_SIZE = 256  # attention.comp keeps one query head in shared memory


def _groups(n: int, size: int) -> int:
    return (n + size - 1) // size


class LayerOps:
    # -- rmsnorm --------------------------------------------------------------------------------

    def rmsnorm(self, out, x, weight, dim: int, eps: float, n_tokens: int = 1) -> None:
        """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, for each of n_tokens rows of dim."""
        prog = self.program("rmsnorm.comp")
        x.bind_to_storage_buffer(0)
        weight.bind_to_storage_buffer(1)
        out.bind_to_storage_buffer(2)
        self._run(prog, n_tokens, dim=dim, eps=eps)
        self.barrier()

    # -- elementwise ----------------------------------------------------------------------------

    def swiglu(self, out, h1, h3, n: int) -> None:
        """out = silu(h1) * h3 over n elements (the FFN gate: hb = silu(w1 x) * w3 x)."""
        prog = self.program("swiglu.comp")
        h1.bind_to_storage_buffer(0)
        h3.bind_to_storage_buffer(1)
        out.bind_to_storage_buffer(2)
        self._run(prog, _groups(n, 64), n=n)
        self.barrier()

    def add(self, dst, src, n: int) -> None:
        """dst += src over n elements (the residual connection)."""
        prog = self.program("add.comp")
        src.bind_to_storage_buffer(0)
        dst.bind_to_storage_buffer(1)
        self._run(prog, _groups(n, 64), n=n)
        self.barrier()

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
        prog = self.program("rope.comp", POS_BUFFER=int(positions is not None), WRITE_CACHE=int(write_cache),
                            KV_F16=int(kv_f16))
        q.bind_to_storage_buffer(0)
        k.bind_to_storage_buffer(1)
        inv_freq.bind_to_storage_buffer(3)
        uniforms: dict[str, object] = dict(head_size=head_size, n_heads=n_heads, n_kv_heads=n_kv_heads, n_rot=n_rot)
        if positions is not None:
            positions.bind_to_storage_buffer(4)
        else:
            uniforms["pos0"] = pos0
        slots = n_heads + n_kv_heads
        if write_cache:
            if v is None or v_cache is None:
                raise BackendError("rope: writing the KV cache needs v, k_cache and v_cache")
            if cache_base % 2:
                raise BackendError(f"rope: cache_base {cache_base} must be even")
            v.bind_to_storage_buffer(2)
            k_cache.bind_to_storage_buffer(5)
            v_cache.bind_to_storage_buffer(6)
            uniforms.update(cache_base=cache_base, seq_len=seq_len)
            slots += n_kv_heads
        self._run(prog, _groups(head_size // 2, 32), slots, n_tokens, **uniforms)
        self.barrier()

    # -- attention ------------------------------------------------------------------------------

    def attention(self, out, q, k_cache, v_cache, *, n_heads: int, n_kv_heads: int, head_size: int,
                  pos0: int, seq_len: int, n_tokens: int = 1, cache_base: int = 0,
                  sliding_window: int = 0, kv_f16: bool = False, att=None) -> None:
        """out[t, h] = softmax(q[t, h] . K / sqrt(hs)) V over cache rows 0..pos0+t (causal, GQA).

        ``att`` is scratch of at least n_heads * n_tokens * seq_len floats; one is kept per
        size when not given.
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
            att = self.scratch("att", n_heads * n_tokens * seq_len * 4)
        prog = self.program("attention.comp", KV_F16=int(kv_f16))
        q.bind_to_storage_buffer(0)
        k_cache.bind_to_storage_buffer(1)
        v_cache.bind_to_storage_buffer(2)
        att.bind_to_storage_buffer(3)
        out.bind_to_storage_buffer(4)
        self._run(prog, n_heads, n_tokens, head_size=head_size, n_heads=n_heads, n_kv_heads=n_kv_heads,
                  pos0=pos0, seq_len=seq_len, cache_base=cache_base, sliding_window=sliding_window)
        self.barrier()
