"""The ``gl`` backend: the Llama forward pass as OpenGL 4.3 compute dispatches.

It mirrors ``cpu.CpuTransformer`` line for line (same interface, same checkpoint names), with one
launcher call per line of math. Weights are uploaded once as raw GGUF blocks (``gl.upload``);
activations, the KV caches and LoRA factors stay on the GPU; only logits (or, with a trace, the
named checkpoints) are read back. A decode step is 12 dispatches per layer:

    rmsnorm, wq, wk, wv, rope (+ KV store), attention, wo (+ residual),
    rmsnorm, w1, w3, swiglu, w2 (+ residual)

or, on a GPU (``fused_decode``: one token, no adapters), 6 (``gl/fused_ops.py``; a trace then has
no ``att_norm`` checkpoint: that norm happens inside the q/k/v dispatch):

    rmsnorm + wq + wk + wv, rope (+ KV store), attention, wo (+ residual),
    rmsnorm + w1 + w3 + swiglu, w2 (+ residual)

and the final rmsnorm rides in the classifier's dispatch. On a CPU rasterizer the 12 are faster
(matvec.comp suits its SIMD lanes; the fused kernel is checked there all the same).

Several sequences (segments) run as one batch: each mat-vec reads its weights once for every
token of every segment (``n_tokens`` = all of them); only rope's cache store and attention run
per segment, on that segment's rows (bound as buffer ranges) and its own KV cache.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Iterator

import numpy as np

from ..backend import Segment, Trace, run_to_end
from ..config import Config
from ..formats import ModelFile
from ..weights import Weights
from .buffers import PreparedWeight
from .context import GLContext
from .fences import Fences
from .run_ahead import DrawnRing, DrawnToken
from .kernels import Kernels
from .lora_fusion import LoraCache, LoraFusion
from .decode_plan import replay_or_record
from .neox import LoraViews, key_layout, keys_in_cache_order, keys_in_file_order
from .pass_steps import PassSteps, rows_of
from .state import GlKVCache, Scratch, buffer_offset_alignment
from .upload import GlWeights, prepare_matrix, upload_order, upload_steps
from .warm_up import warm_up_steps

# Tokens per pass; longer prompts run as successive passes (bounded scratch). The per-token
# kernels (rmsnorm, rope, swiglu) run over the whole pass in one dispatch each: at 128 tokens they
# took up to 6 ms on llvmpipe, at 48 under 3 ms. 48 still holds a scheduler batch (8 decoding
# NPCs + a 32-token prefill chunk) in one pass. A hardware GPU takes 128.
MAX_BATCH_SOFTWARE, MAX_BATCH = 48, 128
# A replayed decode step on a GPU yields to the scheduler about this often (seconds of host
# work), not after every dispatch (decode_plan.py)
PLAN_YIELD_S = 0.0005
ATTENTION_MACS_PER_DISPATCH = 1 << 18  # ~1 ms of prefill attention on 2-core llvmpipe (~3-4 ms per M)


class GlTransformer(PassSteps):
    name = "gl"

    def __init__(self, file: ModelFile, cfg: Config, weights: Weights, ctx=None, kv_f16: bool = True,
                 max_batch: int | None = None, fused_decode: bool | None = None):
        self._begin(ctx if isinstance(ctx, GLContext) else GLContext(ctx), file, cfg, kv_f16, max_batch,
                    fused_decode)  # BackendError without GL 4.3
        try:
            prepared = (prepare_matrix(file, t, self.glctx.weight_part_bytes, cfg) for t in upload_order(weights))
            run_to_end(self.upload_steps(weights, prepared, chunk_bytes=1 << 62))
            run_to_end(self.warm_up_steps())
        except BaseException:
            self.release()  # a half-built backend leaves no GL objects behind
            raise

    @classmethod
    def for_loading(cls, glctx: GLContext, file: ModelFile, cfg: Config, kv_f16: bool = True,
                    max_batch: int | None = None, fused_decode: bool | None = None) -> "GlTransformer":
        """An empty backend on ``glctx`` that ``upload_steps`` then ``warm_up_steps`` complete a
        step at a time (``loading.load_async``); ``release`` frees whatever exists at any point."""
        self = cls.__new__(cls)
        self._begin(glctx, file, cfg, kv_f16, max_batch, fused_decode)
        return self

    def _begin(self, glctx: GLContext, file: ModelFile, cfg: Config, kv_f16: bool, max_batch: int | None,
               fused_decode: bool | None) -> None:
        self.glctx = glctx
        # decode steps through gl/fused_ops (6 dispatches a layer), and segments' next tokens drawn
        # by sample.comp (``can_sample``): the default on a GPU; on a CPU rasterizer the plain
        # kernels and the cpu sampler are faster
        self.fused_decode = not glctx.limits.software if fused_decode is None else fused_decode
        self.gpu_sampling = not glctx.limits.software
        self.run_ahead = False  # passes started before the last drawn id is read: off (run_ahead.py)
        self.plan_yield_s = 0.0 if glctx.limits.software else PLAN_YIELD_S  # (DecodePlan.replay)
        self.cfg, self.kv_f16 = cfg, kv_f16
        self.max_batch = max_batch or (MAX_BATCH_SOFTWARE if glctx.limits.software else MAX_BATCH)
        self.kernels = Kernels(self.glctx)
        self.fences = Fences(glctx.limits.software)
        self.drawn_ring = DrawnRing(glctx.ctx, glctx.limits.software)
        self.lora_views = LoraViews(cfg) if key_layout(cfg) is not None else None
        self.attention_macs_per_dispatch = ATTENTION_MACS_PER_DISPATCH * self.kernels.gpu.dispatch_scale
        self.file = file
        self.weights: GlWeights | None = None
        self._made: list = []  # every weight and buffer made so far, for release at any point

    def upload_steps(self, weights: Weights, prepared: Iterator[PreparedWeight | None],
                     chunk_bytes: int = 4 << 20, on_bytes: Callable[[int], None] | None = None) -> Iterator[None]:
        """Upload the model, a step at a time (``gl.upload.upload_steps``), then make the scratch
        activations and the LoRA caches."""
        self.weights = yield from upload_steps(self.glctx, self.file, self.cfg, weights, prepared, self._made,
                                               chunk_bytes, on_bytes)
        cfg = self.cfg
        self.s = Scratch(self.glctx, cfg)
        self.lora = LoraCache(self.glctx)
        self.fusion = LoraFusion(cfg, self.kernels.gpu, self.lora)
        # Segments are bound as buffer ranges, whose offsets the driver wants aligned.
        align = self.offset_align = buffer_offset_alignment(self.glctx.ctx)
        self.can_slice = all(4 * n % align == 0 for n in (cfg.dim, cfg.q_dim, cfg.kv_dim, cfg.hidden_dim))
        self.glctx.check_error("uploading the model")

    def warm_up_steps(self) -> Iterator[None]:
        """Compile every program before the first real token, a step at a time (``gl.warm_up``)."""
        return warm_up_steps(self)

    def release(self) -> None:
        """Free every GL object this backend made (weights, scratch, LoRA pairs, programs), also
        when it is only partly built; caches made by ``new_cache`` belong to their sessions
        (``GlKVCache.release``)."""
        for obj in self._made:
            obj.release()
        self._made = []
        if hasattr(self, "fences"):
            self.fences.release()
            self.drawn_ring.release()
        for part in ("s", "lora"):
            if hasattr(self, part):
                getattr(self, part).release()
        self.kernels.release()  # compiled programs and launcher scratch
        self.weights = None
        self.glctx.release()

    # -------------------------------------------------------------------------
    # caches

    def new_cache(self, n_ctx: int) -> GlKVCache:
        if n_ctx < 1:
            raise ValueError(f"KV cache size {n_ctx} must be at least 1")
        self.glctx.release_orphans()
        return GlKVCache(self.glctx, self.cfg, n_ctx, self.kv_f16)

    def release_cache(self, kv: GlKVCache) -> None:
        """Free the cache's buffers now (sessions that end, a warm-up's throwaway cache)."""
        kv.release()

    def limit_threads(self, n_threads: int | None) -> None:
        """Nothing to limit: the work runs on the GPU (on llvmpipe, Mesa's LP_NUM_THREADS decides)."""

    def poll(self) -> bool:
        """False while the fence after a pass's last dispatch has not signalled (the GPU is
        still working on it): the scheduler then runs nothing this frame. Never waits."""
        return self.fences.ready()

    def export_kv(self, kv: GlKVCache, n_tokens: int) -> np.ndarray:
        """Rows 0..n_tokens-1 of ``kv`` in the format of ``CpuTransformer.export_kv`` (keys in the
        file's feature order, also for NeoX-rope families: neox.py)."""
        return keys_in_file_order(kv.export(n_tokens), self.cfg)

    def import_kv(self, kv: GlKVCache, array: np.ndarray) -> None:
        """Write rows 0..n-1 of ``kv`` from an ``export_kv`` array (any float dtype, any backend)."""
        kv.import_rows(keys_in_cache_order(array, self.cfg))

    # -------------------------------------------------------------------------
    # the forward pass

    def forward(self, tokens: np.ndarray, pos0: int, kv: GlKVCache, all_logits: bool = False,
                trace: Trace | None = None) -> np.ndarray:
        """Run ``tokens`` (T,) at positions pos0..pos0+T-1, filling ``kv``.

        Returns logits (vocab,) for the last token, or (T, vocab) with ``all_logits``."""
        return run_to_end(self.forward_steps([Segment(tokens, pos0, kv)], all_logits, trace))[0]

    def forward_steps(self, segments: list[Segment], all_logits: bool = False,
                      trace: Trace | None = None) -> Iterator[None]:
        """The forward pass as a generator that yields between dispatches (each under ~3 ms on
        llvmpipe), so a scheduler can keep its frame budget. Returns (via StopIteration) one
        logits array per segment, like ``CpuTransformer.forward_steps``.

        Batches of more than ``max_batch`` tokens (long prompts) run as successive passes; so do
        several segments when the driver cannot bind their rows as buffer ranges."""
        self._check(segments)
        self.glctx.release_orphans()  # caches garbage-collected since the last pass
        if self.lora_views is not None and any(seg.adapters for seg in segments):
            # (NeoX rope: wq/wk rows are reordered on the GPU, so are their LoRA B rows)
            segments = [replace(seg, adapters=self.lora_views(seg.adapters)) for seg in segments]
        total = sum(len(seg.tokens) for seg in segments)
        if total <= self.max_batch and (len(segments) == 1 or self.can_slice):
            return (yield from self._pass(segments, all_logits, trace))
        results = []
        for seg in segments:
            pieces = []
            for a in range(0, len(seg.tokens), self.max_batch):
                last = a + self.max_batch >= len(seg.tokens)  # (only the last piece draws a token)
                piece = Segment(seg.tokens[a:a + self.max_batch], seg.pos0 + a, seg.kv, seg.adapters,
                                seg.sample if last else None)
                pieces.append((yield from self._pass([piece], all_logits, trace))[0])
            results.append(np.concatenate(pieces) if all_logits else pieces[-1])
        return results

    @staticmethod
    def _check(segments: list[Segment]) -> None:
        for seg in segments:
            if not isinstance(seg.kv, GlKVCache):
                raise ValueError(f"segment cache is a {type(seg.kv).__name__}; use GlTransformer.new_cache")
            if seg.pos0 < 0 or seg.pos0 + len(seg.tokens) > seg.kv.n_ctx:
                raise ValueError(f"positions {seg.pos0}..{seg.pos0 + len(seg.tokens) - 1} "
                                 f"do not fit a context of {seg.kv.n_ctx}")

    def decode_greedy(self, tokens: np.ndarray, pos0: int, kv: GlKVCache) -> int:
        """Run ``tokens`` like ``forward`` and pick the most likely next token on the GPU: only the
        4-byte id is read back, never the (vocab,) logits."""
        if len(tokens) > self.max_batch:
            return int(np.argmax(self.forward(tokens, pos0, kv)))
        return run_to_end(self.greedy_steps(Segment(tokens, pos0, kv)))

    def greedy_steps(self, segment: Segment) -> Iterator[None]:
        """``decode_greedy`` of one segment of at most ``max_batch`` tokens (with its adapters) as
        steps; returns the id (via StopIteration)."""
        self._check([segment])
        yield from self._pass([segment], False, None, read_logits=False)
        self.kernels.argmax(self.s.next_token, self.s.logits, self.cfg.vocab_size)
        return int(np.frombuffer(self.s.next_token.read(size=4), np.int32)[0])

    def draw_ahead_steps(self, segment: Segment, after: DrawnToken | None = None) -> Iterator[None]:
        """One session's decode pass whose next token is drawn on the GPU (``segment.sample``,
        which ``can_sample`` must accept), as steps that never wait for the GPU: returns (via
        StopIteration) a ``DrawnToken``, its id read once it is ``ready``. With ``after`` (a
        token drawn by the previous such pass, maybe not finished), the input token is that id,
        copied on the GPU (``segment.tokens`` holds a placeholder), and so is the last entry of
        the penalty window (``segment.sample.recent``, a placeholder there too). run_ahead.py."""
        self._check([segment])
        if len(segment.tokens) != 1 or segment.adapters or segment.sample is None \
                or not self.can_sample(segment.sample.settings):
            raise ValueError("draw_ahead_steps runs one token, no adapters, a sample request it can serve")
        self.glctx.release_orphans()
        return (yield from self._pass([segment], False, None, after=after, keep_drawn=True))

    def _pass(self, segments: list[Segment], all_logits: bool, trace: Trace | None,
              read_logits: bool = True, after: DrawnToken | None = None, keep_drawn: bool = False) -> Iterator[None]:
        """One batch of at most ``max_batch`` tokens: the tokens written, the pass (``_layers``, or a
        one-token step's recorded plan), tokens drawn on the GPU, then the one read-back (or, with
        ``keep_drawn``, the drawn id kept on the GPU for ``draw_ahead_steps``)."""
        cfg, s = self.cfg, self.s
        bounds = np.cumsum([0] + [len(seg.tokens) for seg in segments])  # segment i = rows bounds[i]:bounds[i+1]
        spans = list(zip(segments, bounds[:-1].tolist(), bounds[1:].tolist()))
        T = int(bounds[-1])
        s.ensure(T)
        if after is None:
            s.tokens.write(np.concatenate([np.asarray(seg.tokens, np.int32) for seg in segments]).tobytes())
        else:
            self.drawn_ring.copy_to(after, s.tokens, 0)  # (the id the last pass drew, on the GPU)
        # one session's decode token: the same launches every token (only the token and its
        # position change, read from buffers), recorded once per cache and replayed (decode_plan.py)
        one_token = T == 1 and trace is None and not all_logits and not segments[0].adapters
        fast = self.fused_decode and T == 1 and not segments[0].adapters  # (traced: no att_norm checkpoint)
        if one_token:
            seg, gpu = segments[0], self.kernels.gpu
            s.positions.write(np.array([seg.pos0], np.int32).tobytes())
            narrated = self._layers(spans, T, False, fast, self.checkpoint(None, T), s.positions)
            # a recording depends on the path, the launchers' scratch and the activations' capacity
            yield from replay_or_record(seg.kv, gpu, lambda: (fast, gpu.generation, s.capacity),
                                        narrated, self.plan_yield_s)
        else:
            yield from self._layers(spans, T, all_logits, fast, self.checkpoint(trace, T))
        n_out = T if all_logits else len(spans)

        # segments that asked for it draw their next token on the GPU (sample.comp), so only its
        # id comes back (``draw_tokens``)
        slots = {} if all_logits else self.draw_tokens(spans, after)
        if keep_drawn:
            return self.drawn_ring.keep(self.kernels.gpu.scratch("sample_ids", 0), slots[0])

        # the only read-back of the pass: (n_out, vocab) logits, or the drawn ids; on a GPU,
        # first a fence: the scheduler's poll() holds further steps until the work is done, so
        # the read does not block the frame (fences.py)
        if not read_logits:
            return None
        if self.fences.place():
            yield
        if slots and len(slots) == len(spans):
            ids = self.drawn_ids(slots)
            return [int(ids[slots[i]]) for i in range(len(spans))]
        logits = s.read("logits", n_out)
        if cfg.final_softcap:  # (Gemma 2) on the host: the logits are read back here anyway
            logits = cfg.final_softcap * np.tanh(logits / cfg.final_softcap)
        if trace is not None:
            trace("final.logits", logits)
        if all_logits:
            return [logits[a:b] for _, a, b in spans]
        if slots:
            ids = self.drawn_ids(slots)
            return [int(ids[slots[i]]) if i in slots else row for i, row in enumerate(logits)]
        return list(logits)

    def _layers(self, spans: list, T: int, all_logits: bool, fast: bool, check: Callable,
                positions=None) -> Iterator[None]:
        """The pass from the tokens' embeddings to the logits (``s.logits``), narrated like cpu.py's
        forward_steps; ``positions``: a one-token pass reads its position from this buffer."""
        cfg, k, s = self.cfg, self.kernels, self.s
        hs, dim, kv_dim, q_dim = cfg.head_size, cfg.dim, cfg.kv_dim, cfg.q_dim

        # the residual stream starts as each token's embedding, looked up on the GPU: (T,) -> (T, dim)
        k.embedding(s.x, self.weights.token_embedding_table, s.tokens, n_tokens=T,
                    scale=math.sqrt(dim) if cfg.family.embed_scale else 1.0)  # (Gemma: times sqrt(dim))
        check("embedding", s.x, (dim,))
        yield

        for l, w in enumerate(self.weights.layers):
            # ---------------------------------------------------------------- attention
            # pre-norm: RMSNorm the block's input, scaled per feature by a learned weight
            # (a lone decode token's LoRA: the norm also computes A xb for q, k and v, and each
            # projection's mat-vec adds its B (A xb); LoraFusion.fuse says what to fuse)
            if fast:  # (a decode token on a GPU: the norm and q, k, v in one dispatch)
                yield from self.norm_project((s.q, s.k, s.v), (w.wq, w.wk, w.wv), w.rms_att_weight)
            else:
                lora_a, fused = self.fusion.fuse(l, ("wq", "wk", "wv"), spans)
                k.rmsnorm(s.xb, s.x, w.rms_att_weight, dim=dim, eps=cfg.rms_eps, n_tokens=T, lora_a=lora_a)
                check(f"L{l}.att_norm", s.xb, (dim,))
                yield

                # project to queries, keys and values: (T, dim) -> (T, q_dim), (T, kv_dim), (T, kv_dim)
                yield from self.project(s.q, l, "wq", s.xb, spans, fused=fused)
                yield from self.project(s.k, l, "wk", s.xb, spans, fused=fused)
                yield from self.project(s.v, l, "wv", s.xb, spans, fused=fused)

            if cfg.family.qkv_bias:  # (qwen2) one bias row added to every token's q, k, v
                for dst, bias, width in ((s.q, w.bq, q_dim), (s.k, w.bk, kv_dim), (s.v, w.bv, kv_dim)):
                    k.add(dst, bias, n=T * width, width=width)
            if cfg.family.qk_norm:  # (qwen3) each head of q and k RMS-normalized, in place
                k.rmsnorm(s.q, s.q, w.q_norm, dim=hs, eps=cfg.rms_eps, n_tokens=T * cfg.n_heads)
                k.rmsnorm(s.k, s.k, w.k_norm, dim=hs, eps=cfg.rms_eps, n_tokens=T * cfg.n_kv_heads)

            # rotate q and k by position (RoPE), and store each segment's k, v in its own cache
            # (NeoX-rope families: wq and wk rows were reordered at upload so that this is theirs, neox.py)
            for seg, a, b in spans:
                inv_freq = self.weights.inv_freq_local if cfg.is_local(l) else self.weights.inv_freq
                k.rope(rows_of(s.q, q_dim, a, b), rows_of(s.k, kv_dim, a, b), inv_freq,
                       n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_size=hs, n_rot=self.weights.n_rot,
                       n_tokens=b - a, pos0=seg.pos0, v=rows_of(s.v, kv_dim, a, b),
                       k_cache=seg.kv.key_cache[l], v_cache=seg.kv.value_cache[l],
                       seq_len=seg.kv.n_ctx, kv_f16=seg.kv.f16, positions=positions)
            check(f"L{l}.q", s.q, (cfg.n_heads, hs))
            check(f"L{l}.k", s.k, (cfg.n_kv_heads, hs))
            yield

            # each segment's queries attend over its own past, all heads in one dispatch: -> xb
            # (a lone decode token's LoRA on wo: attention also computes A xb)
            lora_a, fused = self.fusion.fuse(l, ("wo",), spans)
            for seg, a, b in spans:
                yield from self.attend(seg, l, a, b, lora_a, positions)
            check(f"L{l}.att", s.xb, (cfg.n_heads, hs))

            # mix the heads back into the residual stream: x += wo @ xb
            # (Gemma: x += rmsnorm(wo @ xb), through hb2, free until the FFN)
            yield from self.residual(l, "wo", s.xb, w.rms_att_post, spans, fused, T, fast)
            check(f"L{l}.att_out", s.x, (dim,))

            # ---------------------------------------------------------------- feed-forward
            # SwiGLU: a gated projection up to hidden_dim, hb = silu(w1 xb) * (w3 xb), and back down
            if fast:  # (the norm, w1, w3 and the gate in one dispatch)
                yield from self.norm_project((s.hb,), (w.w1, w.w3), w.rms_ffn_weight, gate=True)
                fused = {}
            else:
                lora_a, fused = self.fusion.fuse(l, ("w1", "w3"), spans)
                k.rmsnorm(s.xb, s.x, w.rms_ffn_weight, dim=dim, eps=cfg.rms_eps, n_tokens=T, lora_a=lora_a)
                yield
                yield from self.project(s.hb, l, "w1", s.xb, spans, fused=fused)
                yield from self.project(s.hb2, l, "w3", s.xb, spans, fused=fused)
                lora_a, fused = self.fusion.fuse(l, ("w2",), spans)  # swiglu also computes A hb for w2
                k.swiglu(s.hb, s.hb, s.hb2, n=T * cfg.hidden_dim, lora_a=lora_a, gelu=cfg.family.gelu)
            check(f"L{l}.ffn_hidden", s.hb, (cfg.hidden_dim,))
            yield
            yield from self.residual(l, "w2", s.hb, w.rms_ffn_post, spans, fused, T, fast)
            check(f"L{l}.ffn_out", s.x, (dim,))

        # ---------------------------------------------------------------- output
        # the classifier needs only each segment's last token, unless every position is scored
        if fast:  # (the final norm inside the classifier's dispatch)
            yield from self.norm_project((s.logits,), (self.weights.wcls,), self.weights.rms_final_weight)
        else:
            if all_logits or T == 1:  # (T == 1: no copy, which a plan would not record)
                n_out, last = T, s.x
            else:
                for i, (seg, a, b) in enumerate(spans):
                    self.glctx.ctx.copy_buffer(s.xl, s.x, size=dim * 4, read_offset=(b - 1) * dim * 4,
                                               write_offset=i * dim * 4)
                n_out, last = len(spans), s.xl
            k.rmsnorm(s.xb, last, self.weights.rms_final_weight, dim=dim, eps=cfg.rms_eps, n_tokens=n_out)
            yield
            yield from self.matvec(s.logits, self.weights.wcls, s.xb, n_out)
