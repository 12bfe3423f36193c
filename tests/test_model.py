"""The whole model on the cpu backend: float32 against float64 at named checkpoints, a golden
greedy continuation, and the Python API."""

import os

import numpy as np
import pytest

import perro_pastor
from perro_pastor.model import GenerationStats, load
from perro_pastor.sampling import GREEDY, Sampler, SamplerSettings

PROMPT = "The quick brown fox jumps over the lazy dog. In the village, the shepherd"


@pytest.fixture(scope="module")
def model32():
    return load("default", backend="cpu")


def run_with_checkpoints(model, tokens):
    seen = {}
    kv = model.transformer.new_cache(64)
    model.transformer.forward(np.array(tokens), 0, kv, all_logits=True,
                              trace=lambda name, value: seen.__setitem__(name, np.array(value, np.float64)))
    return seen


def test_float32_matches_float64_at_every_checkpoint(model32):
    model64 = load("default", backend="cpu", dtype=np.float64)
    tokens = model32.tokenizer.encode(PROMPT)
    got, want = run_with_checkpoints(model32, tokens), run_with_checkpoints(model64, tokens)
    assert got.keys() == want.keys() and "L3.q" in got and "final.logits" in got
    for name in want:  # in forward order, so the first failure names the first diverging op
        scale = np.abs(want[name]).max()
        err = np.abs(got[name] - want[name]).max()
        assert err <= 2e-4 * scale + 1e-5, f"{name}: max |f32 - f64| = {err:.3g} (scale {scale:.3g})"
    # the float32 model predicts the same next token everywhere
    np.testing.assert_array_equal(got["final.logits"].argmax(-1), want["final.logits"].argmax(-1))


def test_prefill_in_chunks_equals_one_batch(model32):
    """(With float activations throughout: one-token passes would otherwise round them,
    ``CpuTransformer.int_activations``, and differ from the prompt pass by that rounding.)"""
    tokens = np.array(model32.tokenizer.encode(PROMPT))
    t = model32.transformer
    t.int_activations = False
    try:
        whole = t.forward(tokens, 0, t.new_cache(64), all_logits=True)
        kv = t.new_cache(64)
        parts = [t.forward(tokens[:7], 0, kv, all_logits=True)]
        parts += [t.forward(tokens[i:i + 1], i, kv, all_logits=True) for i in range(7, len(tokens))]
    finally:
        t.int_activations = True
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4, atol=1e-3)


def test_prefill_on_fewer_blas_threads(model32):
    """``prefill_blas_threads``: each step of a prefill pass runs on that many BLAS threads (what
    threadpoolctl reads inside the step), the setting is back between steps and for decode
    passes, and the logits are the ones of the plain pass."""
    from threadpoolctl import threadpool_info

    from perro_pastor.backend import Segment

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    t = model32.transformer
    before = blas_threads()
    tokens = np.array(model32.tokenizer.encode(PROMPT))
    want = t.forward(tokens, 0, t.new_cache(64))
    inside, between, decoding = set(), set(), set()
    real_pass = t._pass
    t.prefill_blas_threads = 1
    t._pass = lambda *args: _recording(real_pass(*args), inside, blas_threads)
    try:
        kv = t.new_cache(64)
        steps = t.forward_steps([Segment(tokens, 0, kv)])
        while True:
            try:
                next(steps)
            except StopIteration as done:
                got = done.value[0]
                break
            between |= blas_threads()
        inside_prefill = set(inside)
        inside.clear()
        for _ in t.forward_steps([Segment(tokens[:1], len(tokens), kv)]):
            decoding |= blas_threads()
    finally:
        t.prefill_blas_threads = None
        del t._pass
    assert inside_prefill == {1}
    assert between == before and inside == before and decoding == before
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_prefill_on_more_blas_threads_runs_the_compiled_kernels_on_one(model32):
    """With ``prefill_blas_threads`` above 1, a prefill pass on the compiled kernels runs them on
    one thread between its BLAS calls (two spinning thread pools on two cores took each other's
    cores); the caller's setting is back between steps, and a decode pass keeps it. Without
    it, BLAS takes one thread and the kernels keep theirs."""
    import numba
    from threadpoolctl import threadpool_info

    from perro_pastor.backend import Segment

    t = model32.transformer
    if t.cpu_kernels != "numba" or (os.cpu_count() or 1) < 2:
        pytest.skip("needs the compiled kernels and two cores")

    def threads() -> tuple:
        return numba.get_num_threads(), max(lib["num_threads"] for lib in threadpool_info()
                                            if lib["user_api"] == "blas")

    before = threads()
    tokens = np.array(model32.tokenizer.encode(PROMPT))
    assert len(tokens) > 8  # (a pass long enough for BLAS)
    real_pass = t._pass
    seen = {}
    for setting in (2, None):
        inside, between, decoding = set(), set(), set()
        t.prefill_blas_threads = setting
        t._pass = lambda *args: _recording(real_pass(*args), inside, lambda: {threads()})
        try:
            kv = t.new_cache(64)
            for _ in t.forward_steps([Segment(tokens, 0, kv)]):
                between.add(threads())
            seen[setting] = set(inside)
            inside.clear()
            for _ in t.forward_steps([Segment(tokens[:1], len(tokens), kv)]):
                decoding.add(threads())
        finally:
            t.prefill_blas_threads = None
            del t._pass
        assert between == {before} and inside == {before} and decoding == {before}
    assert seen[2] == {(1, 2)} and seen[None] == {(before[0], 1)}


def _recording(steps, seen: set, read):
    """``steps`` that add ``read()`` to ``seen`` while each one runs (inside any limit that the
    caller puts around ``next``)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        seen |= read()
        yield


def test_same_seed_same_tokens(model32):
    settings = SamplerSettings(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1)
    runs = [[t.id for t in model32.generate(PROMPT, 12, Sampler(settings, seed=11))] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 12


def test_generate_stats_and_streaming_text(model32):
    stats = GenerationStats()
    pieces = list(model32.generate("Once upon a time", 8, Sampler(GREEDY), stats=stats))
    assert stats.prompt_tokens == 4 and stats.generated_tokens == 8
    assert "".join(p.text for p in pieces).strip()
    assert stats.decode_tok_s > 0 and stats.prefill_tok_s > 0


def test_generate_reads_a_long_prompt_in_bounded_passes(model32, monkeypatch):
    """A prompt longer than PROMPT_PASS_TOKENS is read in passes of at most that many tokens
    (peak memory; docs/cpu_backend.md), and continues as the same prompt read in one pass does."""
    from perro_pastor import model as model_module
    from perro_pastor.model import PROMPT_PASS_TOKENS

    prompt = model32.tokenizer.encode(PROMPT * 30)[:PROMPT_PASS_TOKENS + 60]
    t = model32.transformer
    real = t.forward_steps
    passes = []

    def recording(segments, *args, **kwargs):
        passes.append(sum(len(seg.tokens) for seg in segments))
        return real(segments, *args, **kwargs)

    monkeypatch.setattr(t, "forward_steps", recording)
    bounded = [tok.id for tok in model32.generate(prompt, 6, Sampler(GREEDY))]
    assert passes[:2] == [PROMPT_PASS_TOKENS, 60] and max(passes) == PROMPT_PASS_TOKENS
    monkeypatch.setattr(model_module, "PROMPT_PASS_TOKENS", 10_000)
    passes.clear()
    whole = [tok.id for tok in model32.generate(prompt, 6, Sampler(GREEDY))]
    assert passes[0] == len(prompt) and whole == bounded


def test_context_overflow_is_refused(model32):
    with pytest.raises(ValueError, match="does not fit a context of 4"):
        list(model32.generate(PROMPT, 4, n_ctx=4))


def test_public_api_exports_load():
    assert perro_pastor.load is load


def test_numpy_weights_beyond_the_memory_budget_are_dequantized_on_the_fly(model32):
    tokens = np.array(model32.tokenizer.encode(PROMPT))
    cached = model32.transformer.forward(tokens, 0, model32.transformer.new_cache(64))
    lean = load("default", backend="cpu", cpu_cache_bytes=0, cpu_kernels="numpy")
    streamed = lean.transformer.forward(tokens, 0, lean.transformer.new_cache(64))
    assert lean.transformer.store.cache == {}  # nothing was kept
    np.testing.assert_allclose(streamed, cached, rtol=1e-4, atol=1e-4)


def test_generate_reuses_a_stats_object_and_accepts_zero_tokens(model32):
    """Two runs into one GenerationStats each stream their own tokens (the counts add up), and
    max_tokens=0 streams nothing, as before generate ran on the scheduler."""
    stats = GenerationStats()
    first = [t.id for t in model32.generate(PROMPT, 5, Sampler(GREEDY), stats=stats, stop_at_eos=False)]
    second = [t.id for t in model32.generate(PROMPT, 5, Sampler(GREEDY), stats=stats, stop_at_eos=False)]
    assert first == second and len(first) == 5 and stats.generated_tokens == 10
    assert list(model32.generate(PROMPT, 0, Sampler(GREEDY), n_ctx=64)) == []


def test_auto_takes_the_cpu_backend_on_a_software_renderer(capsys, monkeypatch):
    """llvmpipe has GL 4.3, but computes on the CPU: `auto` picks the cpu backend there and
    says so in one line; `gl` still gets the context. (As if this machine had a GPU device:
    without one, `auto` does not even open a context; the next test.)"""
    from perro_pastor import model as model_module
    from perro_pastor.model import open_gl

    monkeypatch.setattr(model_module, "no_gpu_device", lambda: False)
    glctx = open_gl("gl")
    try:
        assert glctx is not None and glctx.limits.software  # these machines render with llvmpipe
    finally:
        glctx.release()
    assert open_gl("auto") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs on the CPU; using the cpu backend" in err
    assert open_gl("cpu") is None


def test_auto_opens_no_gl_context_on_a_machine_without_a_gpu_device(capsys, monkeypatch, tmp_path):
    """No /dev/dri/renderD*, /dev/nvidia*, /dev/dxg: `auto` takes the cpu backend in one line
    and never creates a GL context (it would be a software renderer); with a render node it
    does look at the renderer."""
    from perro_pastor import model as model_module

    opened = []
    monkeypatch.setattr(model_module, "GLContext", lambda ctx=None: opened.append(ctx) or (_ for _ in ()).throw(
        model_module.BackendError("no GL here")))
    monkeypatch.setattr(model_module, "GPU_DEVICE_NODES", (str(tmp_path / "renderD*"),))
    monkeypatch.setattr(model_module.sys, "platform", "linux")
    assert model_module.open_gl("auto") is None and opened == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no GPU device here" in err
    (tmp_path / "renderD128").touch()
    assert model_module.open_gl("auto") is None and opened == [None]  # looked, found no GL, fell back
    assert "gl backend unavailable" in capsys.readouterr().err
    with pytest.raises(model_module.BackendError):  # `gl` asks for a context whatever the devices say
        model_module.open_gl("gl")
