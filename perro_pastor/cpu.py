"""The ``cpu`` backend: a NumPy forward pass.

It is the reference every GL kernel is checked against (each op below is the twin of a shader of
the same name in ``shaders/``), and the fallback where OpenGL 4.3 is missing (every Mac). It runs
in float32, or in float64 for tests, and can record named checkpoints (``L3.q``,
``final.logits``) so a diverging kernel is found op by op.
"""

from __future__ import annotations

import math
import sys
from typing import Iterator

import numpy as np

from .backend import Segment, Trace, run_to_end
from .config import Config, rope_inv_freq
from .cpu_ops import (NUMPY_OPS, apply_rope, apply_rope_neox, attention, embedding, geglu, rmsnorm,  # noqa: F401
                      rope, rope_rotation, softcap, swiglu)
from .cpu_cache import KVCache
from .threads import blas_controller, limit_kernel_threads, steps_on_threads
from .float_weights import DEFAULT_CACHE_BUDGET, CpuWeights
from .formats import ModelFile
from .weights import FAMILY_VECTORS, Weights

try:  # the compiled kernels (numba); without them the NumPy path below runs everything
    from . import cpu_kernels, cpu_kernels_warm
    from .packed_weights import MATVEC_MAX_ROWS, PackedWeights
    KERNELS_MISSING = ""
except ImportError as exc:
    cpu_kernels = cpu_kernels_warm = PackedWeights = None
    MATVEC_MAX_ROWS = 0
    KERNELS_MISSING = str(exc)

KERNELS = ("auto", "numba", "numpy")

# Rows of the output layer per step of the forward generator (~1-2 ms each for a 576-wide model).
OUTPUT_ROWS_PER_STEP = 8192


# -----------------------------------------------------------------------------
# state

def pick_kernels(kernels: str, dtype: np.dtype) -> str:
    """Resolve "auto" to "numba" or "numpy"; refuse what cannot run."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown cpu kernels {kernels!r} (choose from {', '.join(KERNELS)})")
    if kernels == "numba" and (KERNELS_MISSING or dtype != np.float32):
        raise ValueError("numba kernels need numba installed and float32"
                         + (f" ({KERNELS_MISSING})" if KERNELS_MISSING else ""))
    if kernels == "auto":
        if dtype != np.float32:
            return "numpy"
        if KERNELS_MISSING:
            print(f"perro_pastor: compiled cpu kernels unavailable ({KERNELS_MISSING}); "
                  "using the slower NumPy path", file=sys.stderr)
            return "numpy"
        return "numba"
    return kernels


# -----------------------------------------------------------------------------
# the transformer

class CpuTransformer:
    name = "cpu"
    prefill_blas_threads: int | None = None  # see limit_threads

    def __init__(self, mf: ModelFile, cfg: Config, weights: Weights, dtype=np.float32,
                 cache_budget: int = DEFAULT_CACHE_BUDGET, kernels: str = "auto"):
        """``kernels``: "numba" runs the products on the compiled kernels over packed weights
        (float32 only); "numpy" on float32/float64 matrices dequantized once and cached within
        ``cache_budget`` (the reference); "auto" takes numba where it is installed and the dtype
        is float32."""
        self.cfg, self.w, self.dtype = cfg, weights, np.dtype(dtype)
        self.cpu_kernels = pick_kernels(kernels, self.dtype)
        self.store = PackedWeights(mf) if self.cpu_kernels == "numba" else CpuWeights(mf, self.dtype, cache_budget)
        self._int_activations = self.cpu_kernels == "numba"  # (the property int_activations)
        # passes of a few tokens (decode) run the per-token ops compiled too: there NumPy's
        # per-call cost, not arithmetic, dominates; longer passes keep NumPy's BLAS attention
        self.few_token_ops = cpu_kernels if self.cpu_kernels == "numba" else NUMPY_OPS
        if self.cpu_kernels == "numba":
            cpu_kernels_warm.warm_up()  # compiled once per machine, then loaded from the user's cache
        blas_controller()  # found now (3-15 ms), not inside the first prefill (forward_steps)
        for layer in weights.layers:
            self.store.fuse((layer.wq, layer.wk, layer.wv))
            self.store.fuse((layer.w1, layer.w3))
        freq_factors = self.store.vector(weights.rope_freqs) if weights.rope_freqs else None
        self.inv_freq = rope_inv_freq(cfg, freq_factors)
        self.inv_freq_local = rope_inv_freq(cfg, local=True) if cfg.family.swa_pattern else None
        # what other families add to a layer: biases and extra norms, by weight-table name
        self.extra = [{name: self.store.vector(getattr(layer, name)) for name in FAMILY_VECTORS
                       if getattr(layer, name) is not None} for layer in weights.layers]
        self.rms_att = [self.store.vector(l.rms_att_weight) for l in weights.layers]
        self.rms_ffn = [self.store.vector(l.rms_ffn_weight) for l in weights.layers]
        self.rms_final = self.store.vector(weights.rms_final_weight)

    def prepare(self, t) -> None:
        """Lay out matrix ``t`` for the products now (packed, or dequantized within the cache
        budget) instead of at its first use: the loader calls it for every matrix on its worker
        thread, so no frame pays for it."""
        self.store.matrix(t)

    @property
    def int_activations(self) -> bool:
        """Whether decode passes (one new token per sequence) multiply 4-bit matrices by
        activations rounded to 9 bits per 32 (as llama.cpp does with 8): integer sums, 1.2x the
        decode speed of float activations, and logits that move by half llama.cpp's rounding
        noise (docs/cpu_backend.md). Passes that read a prompt stay float (BLAS on float tiles
        is their fast path, and exact), so perplexity is the float one. On by default with the
        compiled kernels; off, every pass is float (what the gl backend and the oracle tests do)."""
        return self._int_activations

    @int_activations.setter
    def int_activations(self, on: bool) -> None:
        if on and self.cpu_kernels != "numba":
            raise ValueError("integer activations need the compiled cpu kernels (cpu_kernels='numba')")
        self._int_activations = bool(on)

    def limit_threads(self, n_threads: int | None) -> None:
        """At most ``n_threads`` for the compiled kernels called from this thread (numba's count is
        per thread) and for BLAS in the steps of a pass that prefills; None: the defaults. A game
        that ticks on its own thread sets 1 there (sample_game): a second thread that the renderer
        keeps off its core stretches a 3 ms step to 20-35 ms."""
        self.prefill_blas_threads = n_threads
        if self.cpu_kernels == "numba":
            limit_kernel_threads(n_threads)

    def new_cache(self, n_ctx: int) -> KVCache:
        return KVCache(self.cfg, n_ctx, self.dtype)

    def release_cache(self, kv: KVCache) -> None:
        """Nothing to do: a cpu cache is NumPy memory, freed with its last reference."""

    def poll(self) -> bool:
        """Always ready: every step runs to completion before it returns."""
        return True

    def release(self) -> None:
        """Nothing to free beyond what garbage collection frees (the file is the Model's)."""

    def export_kv(self, kv: KVCache, n_tokens: int) -> np.ndarray:
        return kv.export_rows(n_tokens)

    def import_kv(self, kv: KVCache, array: np.ndarray) -> None:
        kv.import_rows(array)

    def forward(self, tokens: np.ndarray, pos0: int, kv: KVCache, all_logits: bool = False,
                trace: Trace | None = None) -> np.ndarray:
        """Run ``tokens`` (T,) at positions pos0..pos0+T-1, filling ``kv``.

        Returns logits (vocab,) for the last token, or (T, vocab) with ``all_logits``."""
        return run_to_end(self.forward_steps([Segment(tokens, pos0, kv)], all_logits, trace))[0]

    def forward_steps(self, segments: list[Segment], all_logits: bool = False,
                      trace: Trace | None = None) -> Iterator[None]:
        """The forward pass as a generator that yields about every millisecond (after attention,
        the attention output, the FFN's up projections, its down projection, each classifier
        slice), so a scheduler can interleave it with other work. Several sequences (segments,
        each with its own KV cache) run as one batch: every weight is read once for all of them;
        only attention is per sequence. Returns (via StopIteration) one logits array per segment.

        A pass that prefills (more tokens than sequences) runs its steps on
        ``prefill_blas_threads`` BLAS threads when that is set (see ``steps_on_threads``). With
        the compiled kernels, a pass long enough to use BLAS takes one BLAS thread unless told
        more, and with more BLAS threads it runs the kernels between its BLAS calls (the
        dequantization) on one thread. Both thread pools spin after each call, and on two cores
        they took each other's: prefill measured 97 tok/s with both on two threads, 264 with BLAS
        on one, 343 with the kernels on one. OpenBLAS's threads also spin into the decode that
        follows (~0.1 s: its first tokens 30% slower) unless ``OPENBLAS_THREAD_TIMEOUT`` was
        small when NumPy loaded; so more BLAS threads is the caller's choice (the CLI makes it,
        docs/cpu_backend.md)."""
        steps = self._pass(segments, all_logits, trace)
        n_tokens = sum(len(seg.tokens) for seg in segments)
        blas_threads = self.prefill_blas_threads if n_tokens > len(segments) else None
        kernel_threads = None
        if self.cpu_kernels == "numba" and n_tokens > MATVEC_MAX_ROWS:  # BLAS does the products
            blas_threads = blas_threads or 1
            kernel_threads = 1 if blas_threads > 1 else None
        if blas_threads is None:
            return (yield from steps)
        return (yield from steps_on_threads(steps, blas_threads, kernel_threads))

    def _pass(self, segments: list[Segment], all_logits: bool, trace: Trace | None) -> Iterator[None]:
        cfg, w, store = self.cfg, self.w, self.store
        compiled_layers = self._compiled_layers(segments, trace)
        trace = trace or (lambda name, value: None)
        for seg in segments:
            if seg.pos0 < 0 or seg.pos0 + len(seg.tokens) > seg.kv.n_ctx:
                raise ValueError(f"positions {seg.pos0}..{seg.pos0 + len(seg.tokens) - 1} "
                                 f"do not fit a context of {seg.kv.n_ctx}")
        tokens = np.concatenate([np.asarray(seg.tokens, dtype=np.int64) for seg in segments])
        outside = tokens[(tokens < 0) | (tokens >= cfg.vocab_size)]
        if len(outside):
            raise ValueError(f"token id {outside[0]} is outside the vocabulary (0..{cfg.vocab_size - 1})")
        positions = np.concatenate([np.arange(seg.pos0, seg.pos0 + len(seg.tokens)) for seg in segments])
        bounds = np.cumsum([0] + [len(seg.tokens) for seg in segments])  # segment i = rows bounds[i]:bounds[i+1]
        T, hs, family = len(tokens), cfg.head_size, cfg.family
        ops = self.few_token_ops if T <= MATVEC_MAX_ROWS else NUMPY_OPS
        apply_rope = apply_rope_neox if family.rope_neox else ops.apply_rope
        gated = geglu if family.gelu else ops.swiglu
        # a decode pass (one new token per sequence) rounds activations for 4-bit matrices
        rounded = self.int_activations and T == len(segments)

        # the residual stream starts as each token's embedding: (T,) -> (T, dim)
        x = store.rows(w.token_embedding_table, tokens)
        if family.embed_scale:
            x = x * math.sqrt(cfg.dim)  # (Gemma)
        trace("embedding", x)
        rotation = rope_rotation(positions, self.inv_freq, self.dtype)  # the same for every layer
        if family.swa_pattern:  # (gemma3: the sliding-window layers rotate with their own base)
            rotation_local = rope_rotation(positions, self.inv_freq_local, self.dtype)

        for l, layer in enumerate(w.layers):
            if compiled_layers is not None:
                # a lone decoding token: each half of the layer below in one compiled call
                yield from self._compiled_layer(x, l, compiled_layers[l], segments[0], rotation, rounded)
                continue

            # ---------------------------------------------------------------- attention
            # pre-norm: RMSNorm the block's input, scaled per feature by a learned weight
            xb = ops.rmsnorm(x, self.rms_att[l], cfg.rms_eps)
            trace(f"L{l}.att_norm", xb)

            # project to queries, keys and values: (T, dim) -> (T, heads, hs); one product, the
            # three matrices are stored as one block of stacked rows (the stores' fuse)
            q, k, v = self.project(xb, l, ("wq", "wk", "wv"), segments, bounds, rounded)
            extra = self.extra[l]
            if family.qkv_bias:  # (qwen2)
                q, k, v = q + extra["bq"], k + extra["bk"], v + extra["bv"]
            q = q.reshape(T, cfg.n_heads, hs)
            k = k.reshape(T, cfg.n_kv_heads, hs)
            v = v.reshape(T, cfg.n_kv_heads, hs)
            if family.qk_norm:  # each head of q and k RMS-normalized (qwen3, gemma3)
                q = rmsnorm(q, extra["q_norm"], cfg.rms_eps)
                k = rmsnorm(k, extra["k_norm"], cfg.rms_eps)

            # rotate q and k by their position (RoPE), so attention scores depend on distance
            turn = rotation_local if cfg.is_local(l) else rotation
            q = apply_rope(q, turn)
            k = apply_rope(k, turn)
            if cfg.query_scale != 1.0:  # (Phi-3 LongRoPE's attention factor, Gemma 27B)
                q = q * cfg.query_scale
            trace(f"L{l}.q", q)
            trace(f"L{l}.k", k)

            # each sequence remembers its keys and values (its cache is head-major), then attends
            # over its own past
            att = np.empty_like(q)
            for seg, a, b in zip(segments, bounds[:-1], bounds[1:]):
                seg.kv.key_cache[l, :, seg.pos0:seg.pos0 + b - a] = k[a:b].transpose(1, 0, 2)
                seg.kv.value_cache[l, :, seg.pos0:seg.pos0 + b - a] = v[a:b].transpose(1, 0, 2)
                if cfg.attn_softcap:  # (gemma2; the NumPy op has the cap)
                    att[a:b] = attention(q[a:b], seg.kv.key_cache[l], seg.kv.value_cache[l], seg.pos0,
                                         cfg.layer_window(l), cfg.attn_softcap)
                else:
                    att[a:b] = ops.attention(q[a:b], seg.kv.key_cache[l], seg.kv.value_cache[l], seg.pos0,
                                             cfg.layer_window(l))
            trace(f"L{l}.att", att)
            yield

            # mix the heads back into the residual stream
            (att_out,) = self.project(att.reshape(T, cfg.q_dim), l, ("wo",), segments, bounds, rounded)
            if family.post_norms:  # (gemma)
                att_out = ops.rmsnorm(att_out, extra["rms_att_post"], cfg.rms_eps)
            x = x + att_out
            trace(f"L{l}.att_out", x)
            yield

            # ---------------------------------------------------------------- feed-forward
            xb = ops.rmsnorm(x, self.rms_ffn[l], cfg.rms_eps)

            # SwiGLU (GeGLU for Gemma): a gated projection up to hidden_dim and back down
            gate, up = self.project(xb, l, ("w1", "w3"), segments, bounds, rounded)
            hb = gated(gate, up)
            trace(f"L{l}.ffn_hidden", hb)
            yield
            (ffn_out,) = self.project(hb, l, ("w2",), segments, bounds, rounded)
            if family.post_norms:
                ffn_out = ops.rmsnorm(ffn_out, extra["rms_ffn_post"], cfg.rms_eps)
            x = x + ffn_out
            trace(f"L{l}.ffn_out", x)
            yield

        # ---------------------------------------------------------------- output
        if not all_logits:
            x = x[bounds[1:] - 1]  # the last token of each segment
        x = ops.rmsnorm(x, self.rms_final, cfg.rms_eps)

        # the classifier is the biggest matmul (vocab rows), so it runs in row slices with a
        # yield between them: a scheduler can keep a frame budget even here
        logits = np.empty((len(x), cfg.vocab_size), dtype=x.dtype)
        for start in range(0, cfg.vocab_size, OUTPUT_ROWS_PER_STEP):
            stop = min(start + OUTPUT_ROWS_PER_STEP, cfg.vocab_size)
            logits[:, start:stop] = store.matmul(x, w.wcls, start, stop, rounded)
            yield
        if cfg.final_softcap:
            logits = softcap(logits, cfg.final_softcap)
        trace("final.logits", logits)
        if all_logits:
            return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return list(logits)


    def _compiled_layers(self, segments: list[Segment], trace: Trace | None) -> list | None:
        """Each layer's kernel arguments when this pass is a lone decoding token on the compiled
        kernels with no LoRA and no trace (cpu_kernels.decode_attention / decode_ffn), else None."""
        if self.cpu_kernels != "numba" or trace is not None or len(segments) != 1 \
                or len(segments[0].tokens) != 1 or segments[0].adapters or not self.cfg.family.plain \
                or self.cfg.query_scale != 1.0 or (self.store.vnni and not self.int_activations):
            return None  # (tiles in VNNI order multiply only rounded activations)
        layers = [self.store.decode_layer_args(layer) for layer in self.w.layers]
        return None if None in layers else layers

    def _compiled_layer(self, x: np.ndarray, l: int, args: tuple, seg: Segment,
                        rotation: np.ndarray, rounded: bool) -> Iterator[None]:
        """Layer l for one token, x (1, dim) updated in place: the lines of the pass below
        (attention, then feed-forward), each half one call."""
        cfg = self.cfg
        wqkv, wo, w13, w2 = args
        cpu_kernels.decode_attention(x, self.rms_att[l], cfg.rms_eps, wqkv, wo, rotation,
                                     seg.kv.key_cache[l], seg.kv.value_cache[l], seg.pos0,
                                     cfg.n_heads, cfg.n_kv_heads, cfg.sliding_window, rounded)
        yield
        cpu_kernels.decode_ffn(x, self.rms_ffn[l], cfg.rms_eps, w13, w2, cfg.hidden_dim, rounded)
        yield

    def project(self, x: np.ndarray, l: int, names: tuple[str, ...], segments: list[Segment],
                bounds: np.ndarray, rounded: bool = False) -> list[np.ndarray]:
        """x @ W.T for each weight ``names`` of layer ``l`` (one product for fused ones), plus
        each segment's own LoRA deltas: y = W x + scale * B (A x). The base weights are never
        modified. ``rounded``: 4-bit matrices take x rounded to 9 bits (``int_activations``)."""
        outs = self.store.matmul_fused(x, tuple(getattr(self.w.layers[l], name) for name in names), rounded)
        for name, out in zip(names, outs):
            for seg, a, b in zip(segments, bounds[:-1], bounds[1:]):
                for adapter in seg.adapters:
                    factors = adapter.factors(l, name)
                    if factors is not None:
                        lora_a, lora_b = factors  # (rank, cols), (rows, rank)
                        out[a:b] += adapter.scale * ((x[a:b] @ lora_a.T) @ lora_b.T).astype(out.dtype)
        return outs

