"""The steps ``GlTransformer._pass`` (gl/forward.py) narrates: a projection with its LoRA deltas,
a mat-vec sliced into dispatches, attention split into groups of query tokens, the residual add,
and a decode token's fused norm + projections (gl/fused_ops.py). A mixin: they read the
transformer's kernels, weights, scratch and config."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..backend import Segment, Trace
from .buffers import GLWeight
from .lora_factors import FusedLora, LoraA
from .state import BufferSlice


SAMPLE_SCRATCH_BYTES = 4096  # 8 segments' penalty windows of 64 ids, and their drawn ids


def rows_of(buf, width: int, a: int, b: int) -> BufferSlice:
    """Token rows a..b-1 of a (T, width) f32 buffer."""
    return BufferSlice(buf, a * width * 4, max(4, (b - a) * width * 4))


class PassSteps:
    """The steps of a forward pass (mixed into ``GlTransformer``)."""

    def residual(self, l: int, name: str, x, post_norm, spans: list, fused: dict, T: int,
                 fast: bool = False) -> Iterator[None]:
        """x_stream += W x for weight ``name`` (the mat-vec adds it in place), or, with a Gemma
        ``post_norm``, x_stream += rmsnorm(W x): the product goes to hb2 first. ``fast``: a
        decode token through the fused kernel (no adapters)."""
        s, cfg = self.s, self.cfg
        weight = getattr(self.weights.layers[l], name)
        if fast and self.kernels.fused.fits(weight):
            dst = s.x if post_norm is None else s.hb2
            yield from self.fused_matvec((dst,), (weight,), x, accumulate=post_norm is None)
        elif post_norm is None:
            return (yield from self.project(s.x, l, name, x, spans, accumulate=True, fused=fused))
        else:
            yield from self.project(s.hb2, l, name, x, spans, fused=fused)
        if post_norm is not None:
            self.kernels.rmsnorm(s.hb2, s.hb2, post_norm, dim=cfg.dim, eps=cfg.rms_eps, n_tokens=T)
            self.kernels.add(s.x, s.hb2, n=T * cfg.dim)

    def norm_project(self, dsts: tuple, weights: tuple[GLWeight, ...], norm, gate: bool = False) -> Iterator[None]:
        """A decode token's dst_i = W_i rmsnorm(x_stream) (``gate``: hb = act(w1 .) * (w3 .)):
        one fused dispatch where the weights allow (``FusedOps.fits``), else one per weight, else
        the plain norm and mat-vecs."""
        k, s, cfg = self.kernels, self.s, self.cfg
        if k.fused.fits(*weights, gate=gate):
            return (yield from self.fused_matvec(dsts, weights, s.x, norm, gate=gate))
        if all(k.fused.fits(w) for w in weights):
            outs = (s.hb, s.hb2) if gate else dsts
            for dst, w in zip(outs, weights):
                yield from self.fused_matvec((dst,), (w,), s.x, norm)
        else:
            k.rmsnorm(s.xb, s.x, norm, dim=cfg.dim, eps=cfg.rms_eps, n_tokens=1)
            outs = (s.hb, s.hb2) if gate else dsts
            for dst, w in zip(outs, weights):
                yield from self.matvec(dst, w, s.xb, 1)
        if gate:
            k.swiglu(s.hb, s.hb, s.hb2, n=cfg.hidden_dim, gelu=cfg.family.gelu)

    def fused_matvec(self, dsts: tuple, weights: tuple[GLWeight, ...], x, norm=None,
                     accumulate: bool = False, gate: bool = False) -> Iterator[None]:
        """``FusedOps.matvec`` a slice of row tiles per dispatch (one slice on a GPU)."""
        for tiles in self.kernels.fused.tile_slices(weights):
            self.kernels.fused.matvec(dsts, weights, x, norm, self.cfg.rms_eps, accumulate, gate,
                                      self.cfg.family.gelu, tiles)
            yield

    def project(self, dst, l: int, name: str, x, spans: list, accumulate: bool = False,
                fused: dict | None = None) -> Iterator[None]:
        """dst (+)= W x for weight ``name`` of layer ``l`` over every token, then each segment's
        LoRA deltas on its own rows: dst[a:b] += scale * B (A x[a:b]). Base weights never change.
        A delta in ``fused`` (from ``LoraFusion.fuse``) is added inside the mat-vec instead."""
        w = getattr(self.weights.layers[l], name)
        adapter, lora = (fused or {}).get(name, (None, None))
        yield from self.matvec(dst, w, x, spans[-1][2], accumulate, lora=lora)
        for seg, a, b in spans:
            for other in seg.adapters:
                if other is adapter:
                    continue  # added by the mat-vec above
                factors = other.factors(l, name)
                if factors is not None:
                    pair = self.lora.pair(factors[0], factors[1], f"L{l}.{name}")
                    self.kernels.lora(rows_of(dst, w.rows, a, b), pair, rows_of(x, w.cols, a, b),
                                      other.scale, n_tokens=b - a)

    def matvec(self, dst, w: GLWeight, x, n_tokens: int, accumulate: bool = False,
               lora: FusedLora | None = None) -> Iterator[None]:
        """dst (+)= W x, one dispatch per step: the launcher's own slices of rows and, for a
        long batch, of tokens (``Kernels.dispatch_shape``), so a scheduler can stop between any
        two of them."""
        group, step = self.kernels.dispatch_shape(w, n_tokens)  # tokens, rows
        group = group if self.can_slice else n_tokens
        for t in range(0, n_tokens, group):
            u = min(n_tokens, t + group)
            xs, ds = (x, dst) if u - t == n_tokens else (rows_of(x, w.cols, t, u), rows_of(dst, w.rows, t, u))
            for r in range(0, w.rows, step):
                n = min(step, w.rows - r)
                self.kernels.matvec(ds, w, xs, n_tokens=u - t, accumulate=accumulate, row_offset=r, n_rows=n,
                                    lora=lora)
                yield

    def attend(self, seg: Segment, l: int, a: int, b: int, lora_a: LoraA | None = None,
               positions=None) -> Iterator[None]:
        """Attention of segment rows a..b-1 (q -> xb), split into groups of query tokens so that
        one dispatch stays short however long the prompt is; ``lora_a``: a lone decode token's
        A xb for wo's fused LoRA delta (``LoraFusion.fuse``)."""
        cfg, s = self.cfg, self.s
        macs_per_token = cfg.n_heads * (seg.pos0 + b - a) * cfg.head_size * 2
        group = max(1, self.attention_macs_per_dispatch // macs_per_token) if self.can_slice else b - a
        for t in range(a, b, group):
            u = min(b, t + group)
            self.kernels.attention(rows_of(s.xb, cfg.q_dim, t, u), rows_of(s.q, cfg.q_dim, t, u),
                                   seg.kv.key_cache[l], seg.kv.value_cache[l],
                                   n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_size=cfg.head_size,
                                   pos0=seg.pos0 + t - a, seq_len=seg.kv.n_ctx, n_tokens=u - t,
                                   sliding_window=cfg.layer_window(l), kv_f16=seg.kv.f16, lora_a=lora_a,
                                   softcap=cfg.attn_softcap, query_scale=cfg.query_scale, positions=positions)
            yield

    def checkpoint(self, trace: Trace | None, T: int) -> Callable:
        """trace(name, rows of a buffer) when tracing; a no-op (no read-back) otherwise."""
        if trace is None:
            return lambda name, buf, shape: None

        def check(name: str, buf, shape: tuple) -> None:
            n = int(np.prod(shape))
            trace(name, np.frombuffer(buf.read(size=T * n * 4), np.float32).reshape((T,) + shape).copy())
        return check

    def drawn_ids(self, slots: dict[int, int]) -> np.ndarray:
        """The ids ``draw_tokens`` had drawn, read back (up to the last slot)."""
        size = 4 * (max(slots.values()) + 1)
        return np.frombuffer(self.kernels.gpu.scratch("sample_ids", size).read(size=size), np.int32)

    def can_sample(self, settings) -> bool:
        """Whether sample.comp draws like ``sampling.Sampler`` with these ``SamplerSettings``:
        temperature, top-k, top-p, min-p, the repetition penalty and its window, logit bias and
        a seed, yes; a Python hook, typical-p, frequency and presence penalties, a forced (+inf)
        token or a model whose logits are soft-capped on the host, no (the session then reads
        the logits back and samples on the CPU)."""
        return (self.gpu_sampling and not self.cfg.final_softcap and settings.hook is None
                and settings.typical_p == 1.0 and settings.frequency_penalty == 0.0
                and settings.presence_penalty == 0.0 and all(b < np.inf for _, b in settings.logit_bias))

    def draw_tokens(self, spans: list, after=None) -> dict[int, int]:
        """Run sample.comp for each segment whose ``sample`` request this backend can serve, on
        its row of the logits (bound as a range); returns {segment index: slot of its id in the
        "sample_ids" scratch}. Each request's penalty window is written there first, its id
        right after it. ``after`` (a lone segment run ahead, run_ahead.py): the window's last
        entry is the id that draw produced, copied on the GPU."""
        k, s, vocab = self.kernels, self.s, self.cfg.vocab_size
        chosen = [(i, seg.sample) for i, (seg, _, _) in enumerate(spans)
                  if seg.sample is not None and self.can_sample(seg.sample.settings)
                  and (i * vocab * 4) % self.offset_align == 0]
        if not chosen:
            return {}
        ids, slots, begins = [], {}, {}
        for i, request in chosen:
            begins[i] = len(ids)
            ids += [int(t) for t in request.recent]
            slots[i] = len(ids)
            ids.append(-1)
        # (with room to spare: a scratch buffer that grows makes every cache's plan stale)
        buf = k.gpu.scratch("sample_ids", max(SAMPLE_SCRATCH_BYTES, 4 * len(ids)))
        buf.write(np.array(ids, np.int32).tobytes())
        if after is not None and slots[0] > begins[0]:
            self.drawn_ring.copy_to(after, buf, slots[0] - 1)
        for i, request in chosen:
            st = request.settings
            row = s.logits if i == 0 else BufferSlice(s.logits, i * vocab * 4, vocab * 4)
            k.sample(buf, row, vocab, out_index=slots[i], seed=request.seed, step=0,
                     temperature=st.temperature, top_k=st.top_k, top_p=st.top_p, min_p=st.min_p,
                     repeat_penalty=st.repeat_penalty, recent_begin=begins[i],
                     recent_count=slots[i] - begins[i], logit_bias=st.logit_bias)
        return slots
