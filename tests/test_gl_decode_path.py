"""The GPU decode path end to end on llvmpipe: the fused kernels (gl/fused_ops.py, 6 dispatches a
layer on a GPU) and tokens drawn by sample.comp. The fused path runs on llvmpipe,
where it is not the default (matvec.comp is faster there) but runs all the same: against the cpu
backend on the default model over 64 greedy tokens, against the unfused gl path on every family
(GQA ratios 1 to 4, biases, q/k norms, post-norms, GeGLU, NeoX rope), and with weights that do not
fit one dispatch (Gemma 3's 262k-row classifier in buffer parts takes the plain path). GPU
sampling: the readback stream at temperature 0, the cpu sampler's distribution when seeded, and
the per-session fallback for what sample.comp lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataclasses import replace

from perro_pastor.backend import SampleRequest, Segment, run_to_end
from perro_pastor.errors import BackendError
from perro_pastor.gl_figures import DecodeFigures, DispatchTimer
from perro_pastor.grammar import Grammar
from perro_pastor.model import load
from perro_pastor.sampling import GREEDY, Sampler, SamplerSettings
from perro_pastor.scheduler import Scheduler

from gl_helpers import glctx  # noqa: F401 (a fixture)
from test_families import family_file  # noqa: F401 (the synthetic family files, a fixture)
from model_slices import model_slice

GEMMA3 = Path(__file__).parent / "assets" / "gemma-3-270m-q4_k_m.gguf"
PROMPT = "Once upon a time, in a village by the sea, there lived"


def gl_model(path):
    try:
        return load(path, backend="gl")
    except BackendError as exc:
        pytest.skip(f"no GL 4.3: {exc}")


def decode(transformer, prompt: list[int], n: int, n_ctx: int = 128) -> tuple[list[int], np.ndarray]:
    """Greedy tokens after ``prompt`` and the logits each was picked from."""
    kv = transformer.new_cache(n_ctx)
    logits = transformer.forward(np.array(prompt), 0, kv)
    tokens, rows = [], []
    for i in range(n):
        rows.append(logits)
        tokens.append(int(np.argmax(logits)))
        logits = transformer.forward(np.array(tokens[-1:]), len(prompt) + i, kv)
    return tokens, np.array(rows)


def test_default_model_64_greedy_tokens_as_on_the_cpu_backend():
    model, cpu = gl_model("default"), load("default", backend="cpu")
    cpu.transformer.int_activations = False  # gl's kernels take float activations: so does the oracle
    try:
        model.transformer.fused_decode = True
        prompt = cpu.tokenizer.encode(PROMPT)
        got, got_logits = decode(model.transformer, prompt, 64)
        want, want_logits = decode(cpu.transformer, prompt, 64)
        if got != want:  # only a near-tie may go either way (gl keeps the KV cache in f16)
            i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            row = want_logits[i]
            assert abs(row[got[i]] - row[want[i]]) < 0.02, (i, got[i], want[i], row[got[i]], row[want[i]])
            got_logits, want_logits = got_logits[:i + 1], want_logits[:i + 1]
        assert np.abs(got_logits - want_logits).max() < 0.01 * np.abs(want_logits).max()
        # the id picked on the GPU (argmax.comp, 4 bytes read back) is the same token
        kv = model.transformer.new_cache(128)
        first = model.transformer.decode_greedy(np.array(prompt), 0, kv)
        assert [first, model.transformer.decode_greedy(np.array([first]), len(prompt), kv)] == want[:2]
    finally:
        model.close()
        cpu.close()


def test_a_fused_decode_step_makes_at_most_7_dispatches_a_layer():
    """6 on a GPU; on llvmpipe the w1/w3 dispatch is split in two to keep each under a frame's
    budget (FusedOps.tile_slices)."""
    model = gl_model("default")
    try:
        tr = model.transformer
        tr.fused_decode = True
        kv = tr.new_cache(8)
        tr.forward(np.array([1, 2]), 0, kv)
        figures = DecodeFigures.attach(tr)
        tr.forward(np.array([3]), 2, kv)
        assert figures.layer_dispatches <= 7
        tr.fused_decode = False
        tr.forward(np.array([4]), 3, kv)
        assert figures.layer_dispatches == 12
        figures.detach()
    finally:
        model.close()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "phi3", "gemma2", "phi3-longrope"])
def test_each_family_decodes_the_same_fused_and_unfused(arch, family_file):
    model = gl_model(family_file(arch))
    try:
        tr = model.transformer
        prompt = model.tokenizer.encode("The miller's daughter")[:12]
        runs = []
        for fused in (False, True):
            tr.fused_decode = fused
            runs.append(decode(tr, prompt, 6, n_ctx=32))
        (plain, plain_logits), (fused_tokens, fused_logits) = runs
        assert fused_tokens == plain
        np.testing.assert_allclose(fused_logits, plain_logits, atol=2e-3 * np.abs(plain_logits).max())
    finally:
        model.close()


@pytest.mark.skipif(not GEMMA3.exists(), reason="test asset missing (make assets)")
def test_weights_in_buffer_parts_take_the_plain_path():
    model, cpu = gl_model(GEMMA3), load(GEMMA3, backend="cpu")
    try:
        tr = model.transformer
        tr.fused_decode = True
        assert not tr.kernels.fused.fits(tr.weights.wcls) or len(tr.weights.wcls.parts) == 1
        prompt = cpu.tokenizer.encode("The capital of France is")
        got, got_logits = decode(tr, prompt, 4, n_ctx=32)
        want, want_logits = decode(cpu.transformer, prompt, 4, n_ctx=32)
        assert got == want
        assert np.abs(got_logits - want_logits).max() < 0.02 * np.abs(want_logits).max()
    finally:
        model.close()
        cpu.close()


# -----------------------------------------------------------------------------
# tokens drawn on the GPU (sample.comp in the decode path)

def _counting(session) -> list:
    """Count the session's cpu-side samplings (logits read back and sampled on the host)."""
    calls = []
    inner = session.choose_token
    session.choose_token = lambda row: calls.append(1) or inner(row)
    return calls


def test_gpu_sampling_streams_what_readback_sampling_streams_at_temperature_0():
    """Greedy with a repetition penalty and a logit bias (+ a banned token): the GPU's pick is the
    cpu Sampler's, token for token and in the text streamed to the game; no logits come back."""
    model = gl_model("default")
    try:
        tr = model.transformer
        tr.fused_decode = True
        settings = SamplerSettings(temperature=0.0, repeat_penalty=1.3, logit_bias={13: 1.5, 30: -np.inf})
        runs = []
        for on_gpu in (True, False):
            tr.gpu_sampling = on_gpu
            session = Scheduler(model).session(system_prompt="You are a blacksmith.", sampler=settings, n_ctx=256)
            calls, streamed = _counting(session), []
            reply = session.ask("What do you sell?", max_tokens=20, on_token=streamed.append)
            reply.result()
            runs.append((reply.token_ids, "".join(streamed), len(calls)))
        (gpu_ids, gpu_text, gpu_calls), (cpu_ids, cpu_text, cpu_calls) = runs
        assert (gpu_ids, gpu_text) == (cpu_ids, cpu_text) and len(gpu_ids) == 20
        assert gpu_calls == 0 and cpu_calls == 20
    finally:
        model.close()


def test_seeded_gpu_draws_follow_the_cpu_sampler_s_distribution():
    """The same decode step drawn 300 times with fresh seeds: token frequencies within 5 sigma
    of the distribution the cpu Sampler draws from (its filters applied to the same logits)."""
    from test_gl_sampling import expected_probs

    model = gl_model(model_slice("Q8_0", 2))
    try:
        tr = model.transformer
        tr.gpu_sampling = True
        settings = SamplerSettings(temperature=1.2, top_k=20, top_p=0.9, min_p=0.02, repeat_penalty=1.2)
        prompt = model.tokenizer.encode(PROMPT)
        kv = tr.new_cache(64)
        tr.forward(np.array(prompt[:-1]), 0, kv)
        last = Segment(np.array(prompt[-1:]), len(prompt) - 1, kv)
        logits = run_to_end(tr.forward_steps([last]))[0]
        recent = prompt[-settings.repeat_last_n:]
        want = expected_probs(logits, settings, recent)
        rng = np.random.default_rng(5)
        draws = [run_to_end(tr.forward_steps([replace(last, sample=SampleRequest(settings, int(seed), tuple(recent)))]))[0]
                 for seed in rng.integers(0, 1 << 32, 300)]
        got = np.bincount(draws, minlength=len(want)) / len(draws)
        assert set(np.flatnonzero(got)) <= set(np.flatnonzero(want)), "drew a token the cpu sampler filters out"
        assert (np.abs(got - want) <= 5 * np.sqrt(want * (1 - want) / len(draws)) + 0.01).all()
    finally:
        model.close()


def test_settings_the_gpu_sampler_lacks_fall_back_per_session():
    """In one batch: a plain session draws on the GPU, one with a sampler hook and one with a
    grammar read their logits back; each gets its reply."""
    model = gl_model(model_slice("Q8_0", 2))
    try:
        model.transformer.gpu_sampling = True
        scheduler = Scheduler(model)
        plain = scheduler.session(sampler=GREEDY, n_ctx=96)
        hooked = scheduler.session(sampler=SamplerSettings(temperature=0.0, hook=lambda l, recent, rng: l), n_ctx=96)
        shaped = scheduler.session(sampler=GREEDY, n_ctx=96)
        counts = [_counting(s) for s in (plain, hooked, shaped)]
        replies = [plain.ask("Hello", max_tokens=6, ignore_eos=True),
                   hooked.ask("Hello", max_tokens=6, ignore_eos=True),
                   shaped.ask("Hello", max_tokens=6, grammar=Grammar('root ::= "yes" | "no"'))]
        for r in replies:
            r.result()
        assert [len(c) for c in counts[:2]] == [0, 6] and len(counts[2]) >= 1
        assert replies[0].token_ids == replies[1].token_ids  # the hook changes nothing
        assert replies[2].text in ("yes", "no")
    finally:
        model.close()


def test_generate_on_gl_draws_on_the_gpu_and_ends_cleanly():
    """`Model.generate` (the CLI's generate) on gl: a session on its own scheduler, its tokens drawn
    on the GPU, its cache freed at the end (it once tried to free it twice)."""
    model = gl_model(model_slice("Q8_0", 2))
    try:
        model.transformer.gpu_sampling = model.transformer.fused_decode = True
        tokens = list(model.generate("Hello there", max_tokens=5, sampler=Sampler(GREEDY), stop_at_eos=False))
        assert len(tokens) == 5
        model.transformer.gpu_sampling = False
        assert [t.id for t in model.generate("Hello there", max_tokens=5, sampler=Sampler(GREEDY),
                                             stop_at_eos=False)] == [t.id for t in tokens]
    finally:
        model.close()


# -----------------------------------------------------------------------------
# batches on a GPU: matmul_lanes.comp

@pytest.mark.parametrize("arch", ["default", "qwen2", "gemma2"])
def test_prefill_through_matmul_lanes_gives_the_same_logits(arch, family_file):
    """Every position's logits of a prompt with the GPU mat-mat (the default on GPUs) and with
    matmul.comp, on llvmpipe."""
    model = gl_model("default" if arch == "default" else family_file(arch))
    try:
        tr = model.transformer
        prompt = np.array(model.tokenizer.encode(PROMPT)[:20])
        runs = []
        for lanes in (False, True):
            tr.kernels.matvecs.matmul_lanes = lanes
            runs.append(tr.forward(prompt, 0, tr.new_cache(32), all_logits=True))
        np.testing.assert_allclose(runs[1], runs[0], atol=2e-3 * np.abs(runs[0]).max())
        assert (runs[1].argmax(-1) == runs[0].argmax(-1)).all()
    finally:
        model.close()


# -----------------------------------------------------------------------------
# the decode plan (gl/decode_plan.py): a one-token pass recorded once per cache, then replayed

@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_replayed_steps_give_the_narrated_pass_s_logits_bit_for_bit(fused):
    """Eight decode steps replayed from the plan against the same steps narrated (the plan dropped
    before each), with another session's batch and a bigger batch (scratch regrown: the plan is
    recorded again) in between, and a profiler attached after recording (it sees the replays)."""
    model = gl_model(model_slice("Q8_0", 2))
    try:
        tr = model.transformer
        tr.fused_decode = fused
        prompt = np.array(model.tokenizer.encode(PROMPT)[:10])
        runs = []
        for replay in (True, False):
            kv, other = tr.new_cache(64), tr.new_cache(64)
            tr.forward(prompt, 0, kv)
            tr.forward(prompt[:3], 0, other)
            token, rows = int(prompt[-1]), []
            for i in range(8):
                if not replay:
                    kv.plan = None
                if i == 3:  # another session's step in between: its own binds and uniforms
                    tr.forward(prompt[3:5], 3, other)
                if i == 5:  # a batch bigger than any before: the scratch buffers are replaced
                    tr.forward(np.zeros(40, np.int64), 0, tr.new_cache(48))
                rows.append(tr.forward(np.array([token]), len(prompt) + i, kv))
                token = int(np.argmax(rows[-1]))
                if replay:
                    assert kv.plan is not None
            runs.append(np.array(rows))
        np.testing.assert_array_equal(runs[0], runs[1])
        timer = DispatchTimer(tr.kernels)
        tr.forward(np.array([1]), len(prompt) + 8, kv)  # replayed: kv's plan was recorded above
        assert timer.dispatches > 2 * len(tr.weights.layers)
        timer.detach()
    finally:
        model.close()


def test_a_fused_decode_step_matches_the_cpu_backend_at_every_checkpoint():
    """The named checkpoints of one fused decode step (after a prompt) against the cpu backend's,
    with test_gl_forward's tolerances (att_norm has no checkpoint: it happens inside q/k/v)."""
    from test_gl_forward import first_divergence

    model, cpu = gl_model(model_slice("Q8_0", 2)), load(model_slice("Q8_0", 2), backend="cpu", dtype=np.float64)
    try:
        model.transformer.fused_decode = True
        prompt = model.tokenizer.encode(PROMPT)[:9]
        records = []
        for m in (model, cpu):
            kv, rec = m.transformer.new_cache(16), {}
            m.transformer.forward(np.array(prompt[:-1]), 0, kv)
            m.transformer.forward(np.array(prompt[-1:]), len(prompt) - 1, kv, trace=rec.__setitem__)
            records.append(rec)
        want = {name: v for name, v in records[1].items() if not name.endswith("att_norm")}
        assert len(want) > 10 and first_divergence(records[0], want) is None, first_divergence(records[0], want)
    finally:
        model.close()
        cpu.close()


def test_a_replay_on_a_gpu_yields_by_time_not_per_dispatch():
    """plan_yield_s (a GPU's default: 0.5 ms) makes a replayed step yield to the scheduler once
    per that much host time instead of after every dispatch; the logits do not change."""
    model = gl_model(model_slice("Q8_0", 2))
    try:
        tr = model.transformer
        kv = tr.new_cache(16)
        tr.forward(np.array([1, 2, 3]), 0, kv)
        tr.forward(np.array([4]), 3, kv)  # records the plan

        def step(yield_every_s: float) -> tuple[int, np.ndarray]:
            tr.plan_yield_s = yield_every_s
            steps, n = tr.forward_steps([Segment(np.array([5]), 4, kv)]), 0
            while True:
                try:
                    next(steps)
                    n += 1
                except StopIteration as done:
                    return n, done.value[0]
        per_dispatch, logits = step(0.0)
        rare, same = step(60.0)
        recorded_yields = sum(call is None for call in kv.plan.calls)  # (decode_plan.YIELD)
        # the pass's own yields (about one a dispatch: 6 a layer fused on a GPU, 12 on llvmpipe),
        # then at most the yield before the read-back
        assert per_dispatch >= recorded_yields >= 5 * len(tr.weights.layers) and rare <= 2
        np.testing.assert_array_equal(same, logits)
    finally:
        model.close()


def test_a_replay_whose_buffers_are_replaced_midway_runs_the_pass_again():
    """Work between two steps of a replay that replaces a scratch buffer the recording binds (a
    bigger attention scratch): the replay stops and the pass runs again, narrated, same logits."""
    model = gl_model(model_slice("Q8_0", 2))
    try:
        tr = model.transformer
        tr.plan_yield_s = 0.0
        kv = tr.new_cache(16)
        tr.forward(np.array([1, 2, 3]), 0, kv)
        tr.forward(np.array([4]), 3, kv)  # records the plan
        want = tr.forward(np.array([5]), 4, kv)  # replayed
        steps = tr.forward_steps([Segment(np.array([5]), 4, kv)])
        next(steps)
        before = tr.kernels.gpu.generation
        tr.kernels.gpu.scratch("att", 1 << 22)  # grown: the recorded binding is released
        assert tr.kernels.gpu.generation == before + 1
        np.testing.assert_array_equal(run_to_end(steps)[0], want)
    finally:
        model.close()


def test_fused_dispatches_stay_within_the_work_group_count_limit(glctx, monkeypatch):  # noqa: F811
    """On a GPU a fused mat-vec is one dispatch, unless its row tiles exceed
    GL_MAX_COMPUTE_WORK_GROUP_COUNT (65535 on some drivers; a 256k vocabulary is 128k tiles)."""
    from perro_pastor.gl.buffers import upload_weight
    from perro_pastor.gl.kernels import Kernels
    from perro_pastor.quant import GGMLType

    from gl_helpers import random_weight

    monkeypatch.setattr(glctx, "limits", replace(glctx.limits, max_group_count=(5, 65535, 65535)))
    kernels = Kernels(glctx)
    kernels.gpu.software = False
    w = upload_weight(glctx, random_weight(GGMLType.Q8_0, 23, 64, np.random.default_rng(0)), GGMLType.Q8_0, 23, 64)
    slices = kernels.fused.tile_slices((w,))
    assert slices == [(0, 5), (5, 10), (10, 12)]
    w.release()
    kernels.release()
