"""The gl forward pass against the cpu reference: named checkpoints on the real default model and
on 1-layer slices re-quantized to each type, perplexity, batching, LoRA, KV export/import.

Slices are derived once with tools/requantize and kept in pytest's cache directory (keyed by the
source model and the requantize code), because quantizing the 49152-row embedding takes seconds.
All models share one headless context: moderngl does not switch between standalone contexts.
"""

from __future__ import annotations


import time

import numpy as np
import pytest

from perro_pastor import model as model_mod
from perro_pastor.backend import Segment, run_to_end
from perro_pastor.weights import PROJECTIONS
from perro_pastor.gl import forward as gl_forward
from perro_pastor.gl.context import assert_no_gl_error, create_headless_context
from perro_pastor.gl_figures import DecodeFigures, DispatchTimer
from perro_pastor.perplexity import perplexity

from model_slices import model_slice

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
PROMPT = "The quick brown fox jumps over"

# Per-checkpoint tolerance, relative to the reference's largest magnitude at that checkpoint.
# Activations differ by float32 summation order (~1e-6) plus the f16 KV cache (~5e-4 at att);
# 30 layers of the real model compound it. Logits are compared the same way.
TOLERANCE = {"embedding": 1e-6, "att_norm": 2e-3, "q": 2e-3, "k": 2e-3, "att": 3e-3,
             "att_out": 3e-3, "ffn_hidden": 3e-3, "ffn_out": 3e-3, "logits": 3e-3}


def first_divergence(gl: dict, ref: dict) -> str | None:
    """llm.c-style report of the first checkpoint (in forward order) beyond its tolerance."""
    for name, want in ref.items():
        got = gl.get(name)
        if got is None:
            return f"{name}: missing from the gl trace"
        if got.shape != want.shape:
            return f"{name}: shape {got.shape} != reference {want.shape}"
        scale = float(np.abs(want).max()) or 1.0
        diff = np.abs(got.astype(np.float64) - want)
        tol = TOLERANCE[name.rsplit(".", 1)[-1]]
        if not np.isfinite(got).all() or diff.max() > tol * scale:
            i = np.unravel_index(int(np.nanargmax(diff)), diff.shape)
            return (f"{name}: max |gl - cpu| = {diff.max():.3g} > {tol} * {scale:.3g} at {i}: "
                    f"gl {got[i]:.6g} cpu {want[i]:.6g}")
    return None


def traced(transformer, tokens, n_ctx=16, **kw):
    rec: dict[str, np.ndarray] = {}
    kv = transformer.new_cache(n_ctx)
    logits = transformer.forward(np.asarray(tokens), 0, kv, trace=lambda n, v: rec.__setitem__(n, v), **kw)
    return rec, logits


@pytest.fixture(scope="module")
def glctx():
    ctx = create_headless_context()
    yield ctx
    ctx.release()


@pytest.fixture(scope="module")
def text():
    return open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()[:3000]


def slice_path(request, qtype: str, n_layers: int = 1):
    return model_slice(qtype, n_layers)


@pytest.fixture(scope="module")
def default_pair(glctx):
    gl = model_mod.load("default", backend="gl", gl_context=glctx)
    cpu = model_mod.load("default", backend="cpu")
    yield gl, cpu
    gl.transformer.release()
    gl.close()
    cpu.close()


@pytest.fixture(scope="module")
def q8_pair(request, glctx):
    """A 2-layer Q8_0 slice on gl, and on cpu in float64 (the oracle) for batching/LoRA/KV tests."""
    path = slice_path(request, "Q8_0", 2)
    gl = model_mod.load(path, backend="gl", gl_context=glctx)
    cpu = model_mod.load(path, backend="cpu", dtype=np.float64)
    yield gl, cpu
    gl.transformer.release()
    gl.close()
    cpu.close()


# -----------------------------------------------------------------------------
# fidelity

def test_default_model_checkpoints_match_cpu(default_pair):
    gl, cpu = default_pair
    tokens = gl.tokenizer.encode(PROMPT)[:3]  # each prompt token costs a full pass of 30 layers
    rec_gl, logits_gl = traced(gl.transformer, tokens)
    rec_cpu, logits_cpu = traced(cpu.transformer, tokens)
    assert len(rec_cpu) == 2 + 7 * gl.config.n_layers
    assert first_divergence(rec_gl, rec_cpu) is None, first_divergence(rec_gl, rec_cpu)
    assert int(np.argmax(logits_gl)) == int(np.argmax(logits_cpu))
    assert_no_gl_error(gl.transformer.glctx)


def test_weights_split_into_small_parts_on_cpu_renderers(default_pair):
    """On llvmpipe every weight goes up in parts of at most 2 MB (no loading step allocates one
    big buffer); the 28.7 MB embedding, also the classifier, is then 15 parts, and the logits
    the other tests compare with the cpu backend come through the split lookup and mat-vec."""
    from perro_pastor.gl.context import SOFTWARE_PART_BYTES
    tr = default_pair[0].transformer
    limit = tr.glctx.weight_part_bytes
    assert limit == (min(SOFTWARE_PART_BYTES, tr.glctx.max_ssbo_bytes) if tr.glctx.limits.software
                     else tr.glctx.max_ssbo_bytes)
    w = tr.weights
    weights = [w.token_embedding_table] + [getattr(layer, n) for layer in w.layers for n in PROJECTIONS]
    assert all(part.buffer.size <= limit for w in weights for part in w.parts)
    if tr.glctx.limits.software:
        assert len(w.token_embedding_table.parts) > 1


def test_decode_step_dispatches_per_layer(default_pair):
    """The plain decode path (a CPU rasterizer's default; the fused one on GPUs is counted in
    test_gl_decode_path.py)."""
    gl, _ = default_pair
    tr = gl.transformer
    kv = tr.new_cache(4)
    figures = DecodeFigures(tr)  # as `perro-pastor bench` measures, from outside the engine
    fused, tr.fused_decode = tr.fused_decode, False
    try:
        tr.forward(np.array([1, 2]), 0, kv)
        tr.forward(np.array([3]), 2, kv)  # a decode step: one token
        stats = figures.stats()
    finally:
        figures.detach()
        tr.fused_decode = fused
    assert stats["dispatches_per_token"] > 0 and "forward_steps" not in vars(tr)
    assert stats["dispatches_per_layer"] <= 12, stats
    # outside the layers: the embedding (one dispatch per buffer part), the final norm, and the
    # classifier in row slices of at most max_weights_per_dispatch weights (49152 x 576 -> 28
    # slices of 1792 rows), each cut again where a buffer part ends
    cfg = gl.config
    w = tr.weights
    _, rows_per_dispatch = tr.kernels.dispatch_shape(w.wcls, 1)
    assert rows_per_dispatch * cfg.dim <= tr.kernels.matvecs.max_weights_per_dispatch
    classifier = -(-cfg.vocab_size // rows_per_dispatch) + len(w.wcls.parts) - 1
    outside = len(w.token_embedding_table.parts) + 1 + classifier
    assert stats["dispatches_per_token"] <= 12 * cfg.n_layers + outside, stats
    assert stats["gl_renderer"] and stats["max_dispatch_ms"] > 0 and stats["matvec_gb_s"] > 0
    assert_no_gl_error(tr.glctx)


class Traced:
    """A model whose forward records the named checkpoints: perplexity's own forward pass then
    serves as the checkpoint comparison too (the 49152-row classifier dominates the cost)."""

    def __init__(self, model):
        self.tokenizer, self.inner, self.record = model.tokenizer, model.transformer, {}
        self.transformer = self

    def new_cache(self, n_ctx):
        return self.inner.new_cache(n_ctx)

    def forward(self, tokens, pos0, kv, all_logits=False, trace=None):
        return self.inner.forward(tokens, pos0, kv, all_logits, trace=self.record.__setitem__)

    def forward_steps(self, segments, all_logits=False, trace=None):
        return self.inner.forward_steps(segments, all_logits, trace=self.record.__setitem__)


@pytest.mark.parametrize("qtype", TYPES)
def test_slice_matches_cpu_checkpoints_and_perplexity(request, glctx, text, qtype):
    path = slice_path(request, qtype)
    gl = Traced(model_mod.load(path, backend="gl", gl_context=glctx))
    cpu = Traced(model_mod.load(path, backend="cpu"))
    try:
        # one chunk of 8 tokens (the first 60 bytes): affordable on a loaded 2-core llvmpipe
        ppl_gl = perplexity(gl, text[:60], n_ctx=8)
        ppl_cpu = perplexity(cpu, text[:60], n_ctx=8)
        assert ppl_gl.chunks == 1 and gl.record["final.logits"].shape == (8, gl.inner.cfg.vocab_size)
        problem = first_divergence(gl.record, cpu.record)
        assert problem is None, f"{qtype}: {problem}"
        assert abs(ppl_gl.ppl / ppl_cpu.ppl - 1) < 0.005, (qtype, ppl_gl, ppl_cpu)
        assert_no_gl_error(glctx)
    finally:
        gl.inner.release()


def test_f32_kv_cache_matches_cpu(request, glctx):
    path = slice_path(request, "Q8_0", 2)
    gl = model_mod.load(path, backend="gl", gl_context=glctx)
    cpu = model_mod.load(path, backend="cpu", dtype=np.float64)
    tr = gl_forward.GlTransformer(gl.file, gl.config, gl.weights, ctx=glctx, kv_f16=False)
    try:
        tokens = gl.tokenizer.encode(PROMPT)
        rec_gl, _ = traced(tr, tokens)
        rec_cpu, _ = traced(cpu.transformer, tokens)
        assert first_divergence(rec_gl, rec_cpu) is None, first_divergence(rec_gl, rec_cpu)
        # an f32 cache is exact enough to hold attention 10x tighter than the f16 tolerance
        att = max(np.abs(rec_gl[n] - rec_cpu[n]).max() / np.abs(rec_cpu[n]).max() for n in ("L0.att", "L1.att"))
        assert att < 3e-4
        assert tr.export_kv(tr.new_cache(2), 1).dtype == np.float32
    finally:
        tr.release()
        gl.transformer.release()
        gl.close()
        cpu.close()


# -----------------------------------------------------------------------------
# batching

def test_prefill_equals_token_by_token_decode(q8_pair, monkeypatch):
    gl, _ = q8_pair
    tr = gl.transformer
    tokens = np.array(gl.tokenizer.encode(PROMPT))
    prefill = tr.forward(tokens, 0, tr.new_cache(len(tokens)), all_logits=True)
    kv = tr.new_cache(len(tokens))
    decode = np.stack([tr.forward(tokens[i:i + 1], i, kv) for i in range(len(tokens))])
    np.testing.assert_allclose(prefill, decode, rtol=0, atol=2e-3 * np.abs(decode).max())
    # the same prompt as passes of 2 tokens, and with attention split into one dispatch per token
    monkeypatch.setattr(tr, "max_batch", 2)
    monkeypatch.setattr(gl_forward, "ATTENTION_MACS_PER_DISPATCH", 1)
    timer = DispatchTimer(tr.kernels)
    passes = tr.forward(tokens, 0, tr.new_cache(len(tokens)), all_logits=True)
    timer.detach()
    assert timer.dispatches > 20 * gl.config.n_layers
    np.testing.assert_allclose(passes, prefill, rtol=0, atol=2e-3 * np.abs(decode).max())
    assert_no_gl_error(tr.glctx)


def make_adapter(rng, cfg, layers_names, scale):
    """A random LoRA adapter in the shape perro_pastor.lora.LoraAdapter exposes."""
    sizes = {"wq": (cfg.dim, cfg.dim), "wk": (cfg.kv_dim, cfg.dim), "wv": (cfg.kv_dim, cfg.dim),
             "wo": (cfg.dim, cfg.dim), "w1": (cfg.hidden_dim, cfg.dim), "w3": (cfg.hidden_dim, cfg.dim),
             "w2": (cfg.dim, cfg.hidden_dim)}

    class Adapter:
        def __init__(self):
            self.scale = scale
            self.targets = {}
            for l, name in layers_names:
                rows, cols = sizes[name]
                rank = 3
                self.targets[(l, name)] = (rng.standard_normal((rank, cols)).astype(np.float32) * 0.05,
                                           rng.standard_normal((rows, rank)).astype(np.float32) * 0.05)

        def factors(self, layer, name):
            return self.targets.get((layer, name))
    return Adapter()


def test_batched_segments_with_lora_equal_each_alone(q8_pair):
    gl, cpu = q8_pair
    rng = np.random.default_rng(7)
    cfg = gl.config
    a1 = make_adapter(rng, cfg, [(0, "wq"), (0, "wv"), (1, "w2"), (1, "wo")], 0.8)
    a2 = make_adapter(rng, cfg, [(0, "w1"), (1, "w3"), (1, "wk")], 1.5)
    history = [rng.integers(0, cfg.vocab_size, 3) for _ in range(3)]
    new = [rng.integers(0, cfg.vocab_size, n) for n in (1, 4, 1)]
    adapters = [(), (a1,), (a1, a2)]

    def segments(tr):
        segs = []
        for hist, tok, ad in zip(history, new, adapters):
            kv = tr.new_cache(8)
            run_to_end(tr.forward_steps([Segment(hist, 0, kv, ad)]))
            segs.append(Segment(tok, len(hist), kv, ad))
        return segs

    steps = gl.transformer.forward_steps(segments(gl.transformer), all_logits=True)
    n_steps = 0
    try:
        while True:
            next(steps)
            n_steps += 1
    except StopIteration as done:
        batched = done.value
    assert n_steps >= 12 * cfg.n_layers  # it yields between dispatches
    alone = [run_to_end(gl.transformer.forward_steps([s], all_logits=True))[0] for s in segments(gl.transformer)]
    ref = [run_to_end(cpu.transformer.forward_steps([s], all_logits=True))[0] for s in segments(cpu.transformer)]
    plain = run_to_end(cpu.transformer.forward_steps([Segment(new[1], 3, segments(cpu.transformer)[1].kv)],
                                                     all_logits=True))[0]
    assert np.abs(ref[1] - plain).max() > 0.05  # the adapters change the logits
    for i, (b, a, r) in enumerate(zip(batched, alone, ref)):
        assert b.shape == r.shape == (len(new[i]), cfg.vocab_size)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-3 * np.abs(r).max(), err_msg=f"segment {i}: batched")
        np.testing.assert_allclose(b, r, rtol=0, atol=3e-3 * np.abs(r).max(), err_msg=f"segment {i}: vs cpu")
    assert_no_gl_error(gl.transformer.glctx)


def test_decode_with_lora_on_every_projection_folds_into_the_mat_vecs(q8_pair):
    """A lone decode token with one adapter on all seven projections of every layer: the deltas
    are added inside the mat-vecs and their A x inside the kernels that make each input (rmsnorm,
    attention, swiglu: fuse_lora), so the step takes no extra dispatch; the logits match the cpu
    backend and the gl two-dispatch path."""
    gl, cpu = q8_pair
    cfg, tr = gl.config, gl.transformer
    rng = np.random.default_rng(11)
    names = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    adapter = make_adapter(rng, cfg, [(l, n) for l in range(cfg.n_layers) for n in names], 0.9)
    history = rng.integers(0, cfg.vocab_size, 4)

    def decode(transformer, adapters):
        """The logits of one decode step after the history, and the gl dispatches it took."""
        kv = transformer.new_cache(8)
        run_to_end(transformer.forward_steps([Segment(history, 0, kv, adapters)]))
        timer = DispatchTimer(transformer.kernels) if transformer.name == "gl" else None
        logits = run_to_end(transformer.forward_steps([Segment(np.array([7]), len(history), kv, adapters)]))[0]
        if timer is not None:
            timer.detach()
        return logits, (timer.dispatches if timer else 0)

    fused, tr.fused_decode = tr.fused_decode, False  # (the plain path, which adapters take)
    try:
        base_dispatches = decode(tr, ())[1]
    finally:
        tr.fused_decode = fused
    folded, lora_dispatches = decode(tr, (adapter,))
    assert lora_dispatches == base_dispatches
    ref = decode(cpu.transformer, (adapter,))[0]
    assert np.abs(ref - decode(cpu.transformer, ())[0]).max() > 0.05  # the adapter matters
    np.testing.assert_allclose(folded, ref, rtol=0, atol=3e-3 * np.abs(ref).max())

    class Copy:  # the same factors as a second adapter object: the batch (two-dispatch) path
        scale, factors = adapter.scale, adapter.factors
    kv = [tr.new_cache(8), tr.new_cache(8)]
    for cache in kv:
        run_to_end(tr.forward_steps([Segment(history, 0, cache, (adapter,))]))
    batched = run_to_end(tr.forward_steps([Segment(np.array([7]), len(history), kv[0], (adapter,)),
                                           Segment(np.array([7]), len(history), kv[1], (Copy(),))]))
    for logits in batched:  # the fused path rounds A and B to int8 rows; the batch path does not
        np.testing.assert_allclose(folded, logits, rtol=0, atol=3e-3 * np.abs(ref).max())
    assert_no_gl_error(tr.glctx)


# -----------------------------------------------------------------------------
# KV cache

def test_export_import_round_trip(q8_pair):
    gl, cpu = q8_pair
    tr, cfg = gl.transformer, gl.config
    tokens = np.array(gl.tokenizer.encode(PROMPT))
    kv = tr.new_cache(12)
    tr.forward(tokens, 0, kv)
    saved = tr.export_kv(kv, len(tokens))
    assert saved.shape == (2, cfg.n_layers, len(tokens), cfg.n_kv_heads, cfg.head_size)
    assert saved.dtype == np.float16 and np.abs(saved).max() > 0.1

    # restored into a fresh gl cache: the same rows, and the same next-token logits
    other = tr.new_cache(12)
    tr.import_kv(other, saved)
    np.testing.assert_array_equal(tr.export_kv(other, len(tokens)), saved)
    nxt = np.array([42])
    np.testing.assert_array_equal(tr.forward(nxt, len(tokens), other), tr.forward(nxt, len(tokens), kv))

    # the format is the cpu backend's: a gl cache continues on cpu and the other way round
    cpu_kv = cpu.transformer.new_cache(12)
    cpu.transformer.import_kv(cpu_kv, saved)
    ref = cpu.transformer.forward(nxt, len(tokens), cpu_kv)
    back = tr.new_cache(12)
    tr.import_kv(back, cpu.transformer.export_kv(cpu_kv, len(tokens) + 1))
    got = tr.forward(np.array([7]), len(tokens) + 1, back)
    want = cpu.transformer.forward(np.array([7]), len(tokens) + 1, cpu_kv)
    assert np.abs(ref - tr.forward(nxt, len(tokens), other)).max() < 3e-3 * np.abs(ref).max()
    assert np.abs(got - want).max() < 3e-3 * np.abs(want).max()

    with pytest.raises(ValueError, match="does not fit"):
        tr.import_kv(tr.new_cache(2), saved)
    with pytest.raises(ValueError, match="cannot export"):
        tr.export_kv(kv, 13)
    assert_no_gl_error(tr.glctx)


def test_decode_greedy_reads_back_only_the_id(q8_pair):
    gl, _ = q8_pair
    tr = gl.transformer
    tokens = np.array(gl.tokenizer.encode(PROMPT))
    a, b = tr.new_cache(len(tokens) + 1), tr.new_cache(len(tokens) + 1)
    assert tr.decode_greedy(tokens, 0, a) == int(np.argmax(tr.forward(tokens, 0, b)))
    nxt = int(np.argmax(tr.forward(np.array([5]), len(tokens), b)))
    assert tr.decode_greedy(np.array([5]), len(tokens), a) == nxt
    np.testing.assert_array_equal(tr.export_kv(a, len(tokens) + 1), tr.export_kv(b, len(tokens) + 1))
    with pytest.raises(ValueError, match="do not fit"):
        tr.decode_greedy(np.array([5]), len(tokens) + 1, a)


def test_bad_segments_are_refused(q8_pair):
    gl, cpu = q8_pair
    tr = gl.transformer
    with pytest.raises(ValueError, match="do not fit a context of 4"):
        tr.forward(np.arange(5), 0, tr.new_cache(4))
    with pytest.raises(ValueError, match="KVCache"):
        tr.forward(np.arange(2), 0, cpu.transformer.new_cache(4))


def test_scheduler_drives_gl_like_cpu(q8_pair):
    """The runtime (sessions, batches, prefix cache) on gl picks the tokens it picks on cpu."""
    from perro_pastor.sampling import SamplerSettings
    from perro_pastor.scheduler import Scheduler

    greedy = SamplerSettings(temperature=0.0)
    picked = {}
    for m in q8_pair:
        sched = Scheduler(m)
        guard = sched.session(sampler=greedy, n_ctx=48, system_prompt="You guard the gate.")
        smith = sched.session(sampler=greedy, n_ctx=48)
        a = guard.ask("Who goes there?", max_tokens=2, ignore_eos=True)
        b = smith.ask("Hello", max_tokens=2, ignore_eos=True)
        deadline = time.monotonic() + 120  # (on a GPU most ticks only find a fence pending)
        while not (a.done and b.done) and time.monotonic() < deadline:
            sched.tick(50)
        picked[m.backend] = (a.token_ids, b.token_ids)
    assert len(picked["gl"][0]) == 2 and picked["gl"] == picked["cpu"]


def test_bench_row_has_the_dispatch_figures(default_pair):
    """`perro-pastor bench --json` on the gl backend: issue 3's keys plus the dispatch-time tail,
    from a real (short) run."""
    from perro_pastor.bench import run_bench
    row = run_bench(default_pair[0], n_prompt=4, n_gen=3, repeats=1)
    for key in ("prefill_tok_s", "decode_tok_s", "dispatches_per_token", "host_ms_per_token",
                "max_dispatch_ms", "backend", "gl_renderer", "dispatch_ms_p99", "dispatch_ms_p999",
                "dispatches_over_3ms", "dispatches_timed", "matvec_gb_s"):
        assert row.get(key) is not None, key
    assert row["backend"] == "gl" and row["dispatches_per_layer"] <= 12
    assert 0 < row["dispatch_ms_p99"] <= row["dispatch_ms_p999"] <= row["max_dispatch_ms"]
    assert 0 <= row["dispatches_over_3ms"] <= row["dispatches_timed"]
