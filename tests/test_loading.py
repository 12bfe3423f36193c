"""load_async: progress, cancellation without leaks, errors, equivalence with load(), bounded steps.

GL objects are counted by wrapping the moderngl context: every buffer and program made through it
is remembered, and an object is alive until moderngl marks it released."""

from __future__ import annotations

import time

import numpy as np
import pytest

from perro_pastor import load_async
from perro_pastor.errors import BackendError, ModelFormatError
from perro_pastor.model import load
from perro_pastor.scheduler import Scheduler

from model_slices import model_slice

moderngl = pytest.importorskip("moderngl")


class CountingContext:
    """A moderngl context that remembers every buffer and program created through it."""

    def __init__(self, ctx):
        self._ctx, self.made = ctx, []

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def _track(self, obj):
        self.made.append(obj)
        return obj

    def buffer(self, *args, **kwargs):
        return self._track(self._ctx.buffer(*args, **kwargs))

    def compute_shader(self, *args, **kwargs):
        return self._track(self._ctx.compute_shader(*args, **kwargs))

    def live(self) -> list:
        return [o for o in self.made if type(o.mglo).__name__ != "InvalidObject"]


@pytest.fixture(scope="module")
def raw_ctx():
    try:
        ctx = moderngl.create_standalone_context(require=430, backend="egl")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no GL 4.3 context: {exc}")
    yield ctx
    ctx.release()


@pytest.fixture(scope="module")
def slice_path():
    """The default model cut to 2 layers, Q4_1."""
    return model_slice("Q4_1", n_layers=2)


def run_steps(task, limit: int | None = None, limit_s: float = 120.0) -> int:
    """Drive ``task.steps()`` by hand; stop after ``limit`` steps. Returns the steps run."""
    steps, n = task.steps(), 0
    deadline = time.monotonic() + limit_s
    for _ in steps:
        n += 1
        if limit is not None and n >= limit:
            break
        assert time.monotonic() < deadline, f"loading stuck in phase {task.phase}"
    return n


def tick_until_done(sched: Scheduler, task, limit_s: float) -> None:
    """A game's frame loop: ``sched.tick(4.0)`` until the task ends, within ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not task.done:
        sched.tick(4.0)
        assert time.monotonic() < deadline, f"loading stuck in phase {task.phase}"


def test_progress_is_monotonic_and_ends_at_one(raw_ctx, slice_path):
    ctx = CountingContext(raw_ctx)
    seen = []
    task = load_async(slice_path, backend="gl", gl_context=ctx,
                      on_progress=lambda t: seen.append((t.fraction, t.phase, t.bytes_done)))
    while not task.done:
        task.poll(4.0)
        seen.append((task.fraction, task.phase, task.bytes_done))
    assert task.error is None and task.phase == "ready" and task.model is not None
    fractions = [f for f, _, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == task.fraction == 1.0
    assert [b for _, _, b in seen] == sorted(b for _, _, b in seen)
    phases = list(dict.fromkeys(p for _, p, _ in seen))
    assert phases == ["opening", "reading", "uploading", "compiling", "ready"], phases
    assert task.bytes_done == task.bytes_total > 0 and task.tensors_done == task.tensors_total == 1 + 2 * 7
    assert task.eta_s == 0.0 and task.load_s > 0 and task.join(5)
    task.model.transformer.release()
    assert ctx.live() == []  # unloading frees every buffer and program
    task.model.close()


def test_async_gl_model_gives_the_sync_logits(raw_ctx, slice_path):
    sched = Scheduler(None)
    task = load_async(slice_path, scheduler=sched, backend="gl", gl_context=raw_ctx)
    tick_until_done(sched, task, 120)
    assert task.model is not None and not sched.jobs
    sync = load(slice_path, backend="gl", gl_context=raw_ctx)
    tokens = np.array([1, 504, 3458, 28])
    got = task.model.transformer.forward(tokens, 0, task.model.transformer.new_cache(8), all_logits=True)
    want = sync.transformer.forward(tokens, 0, sync.transformer.new_cache(8), all_logits=True)
    np.testing.assert_array_equal(got, want)  # same payload, same programs: bit for bit
    for m in (task.model, sync):
        m.transformer.release()
        m.close()


def test_upload_steps_write_at_most_one_chunk(raw_ctx, slice_path):
    """Each GL step writes at most ``chunk_bytes``, and the worker stays about one tensor ahead."""
    chunk = 256 << 10
    task = load_async(slice_path, backend="gl", gl_context=raw_ctx, chunk_bytes=chunk)
    steps, last, ahead, step_ms = task.steps(), 0, [], []
    for _ in steps:
        if task.phase == "uploading":
            assert task.bytes_done - last <= chunk
            ahead.append(task.in_flight_bytes)
        last = task.bytes_done
    assert task.phase == "ready" and ahead
    biggest = max(t.nbytes for t in task.model.file.tensors.values())
    assert max(ahead) <= 2 * max(biggest, 8 << 20)
    task.model.transformer.release()
    task.model.close()


@pytest.mark.parametrize("phase, k", [("opening", 1), ("opening", 3), ("uploading", 1), ("uploading", 7),
                                      ("uploading", 20), ("compiling", 1), ("compiling", 60)])
def test_cancel_leaves_nothing_behind(raw_ctx, slice_path, phase, k):
    """Cancel after the k-th step of a phase: no GL object left, no thread running."""
    ctx = CountingContext(raw_ctx)
    task = load_async(slice_path, backend="gl", gl_context=ctx, chunk_bytes=1 << 20)
    steps, n = task.steps(), 0
    for _ in steps:
        n += task.phase == phase
        if n >= k or task.phase == "ready":
            break
    assert task.phase == phase, f"the load never had {k} steps in {phase}"
    start = time.perf_counter()
    task.cancel()
    assert time.perf_counter() - start < 1.0
    assert task.phase == "cancelled" and task.done and task.model is None
    assert ctx.live() == [], f"cancelled in {phase} after {k} steps"
    assert task.join(10), "worker thread still running"
    assert next(steps, "ended") == "ended"  # the generator ends once cancelled
    assert raw_ctx.error == "GL_NO_ERROR"


def test_a_bad_file_fails_on_the_task(tmp_path, raw_ctx):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    ctx = CountingContext(raw_ctx)
    sched = Scheduler(None)
    task = load_async(bad, scheduler=sched, backend="gl", gl_context=ctx)
    tick_until_done(sched, task, 20)
    assert task.phase == "failed" and task.model is None
    assert isinstance(task.error, ModelFormatError) and "broken.gguf" in str(task.error)
    with pytest.raises(ModelFormatError) as sync:
        load(bad, backend="cpu")
    assert str(task.error) == str(sync.value)  # the same message as a synchronous load
    assert ctx.live() == [] and task.join(5)
    with pytest.raises(ModelFormatError, match="broken.gguf"):
        task.wait()


def test_missing_gl_fails_like_load(slice_path):
    class NoCompute:  # a context that reports GL 3.3
        version_code = 330
        info = {"GL_RENDERER": "test", "GL_VERSION": "3.3"}
    task = load_async(slice_path, backend="gl", gl_context=NoCompute())
    with pytest.raises(BackendError, match="gl backend unavailable"):
        task.wait()
    assert task.join(5)


def test_cpu_backend_loads_off_thread(slice_path):
    task = load_async(slice_path, backend="cpu")
    fractions = []
    while not task.done:
        task.poll(4.0)
        fractions.append(task.fraction)
        time.sleep(0.001)
    assert task.model.backend == "cpu" and fractions == sorted(fractions) and task.fraction == 1.0
    store = task.model.transformer.store
    assert len(store.packed) == task.tensors_total  # every matrix packed by the worker
    sync = load(slice_path, backend="cpu")
    tokens = np.array([1, 504, 3458])
    np.testing.assert_array_equal(task.model.transformer.forward(tokens, 0, task.model.transformer.new_cache(4)),
                                  sync.transformer.forward(tokens, 0, sync.transformer.new_cache(4)))


def test_default_model_under_a_4ms_budget(raw_ctx):
    """The real default model through the scheduler; then unloading frees every GL object."""
    ctx = CountingContext(raw_ctx)
    sched = Scheduler(None)
    task = load_async("default", scheduler=sched, backend="gl", gl_context=ctx)
    tick_until_done(sched, task, 300)
    assert task.phase == "ready" and task.fraction == 1.0 and task.tensors_done == 1 + 30 * 7
    model = task.model
    kv = model.transformer.new_cache(8)
    token = model.transformer.decode_greedy(np.array(model.tokenizer.encode("Hello")), 0, kv)
    assert 0 <= token < model.config.vocab_size
    kv.release()  # a session's cache is the session's to free
    assert ctx.live()
    model.transformer.release()
    assert ctx.live() == []
    model.close()


def test_poll_keeps_to_its_budget_on_an_injected_clock(slice_path, raw_ctx):
    """With a clock that advances 1 ms per reading, a 4 ms poll runs at most a few steps."""
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    task = load_async(slice_path, backend="gl", gl_context=raw_ctx, clock=clock)
    per_poll, deadline = [], time.monotonic() + 120
    while not task.done:
        before = now[0]
        task.poll(4.0)
        per_poll.append(round((now[0] - before) * 1000))
        assert time.monotonic() < deadline
    assert task.phase == "ready" and max(per_poll) <= 4 + 2  # the budget, plus the step that crossed it
    task.model.transformer.release()
    task.model.close()


def test_frequent_gil_handover_sets_and_restores_the_switch_interval():
    """The loader worker's (and the sample game's template thread's) GIL hand-over: 0.5 ms
    inside the block, the previous interval after it, also when the block raises."""
    import sys

    from perro_pastor.threads import LOADING_SWITCH_INTERVAL_S, frequent_gil_handover

    before = sys.getswitchinterval()
    with frequent_gil_handover():
        assert sys.getswitchinterval() == pytest.approx(LOADING_SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == before
    with pytest.raises(KeyError):
        with frequent_gil_handover():
            raise KeyError("x")
    assert sys.getswitchinterval() == before


def test_sessions_closed_or_dropped_free_their_gl_buffers(raw_ctx, slice_path):
    """``Session.close`` frees an NPC's KV buffers at once; sessions garbage-collected with their
    scheduler hand theirs to the context, freed at its next pass (issue 20's leak on churn)."""
    import gc

    from perro_pastor.sampling import GREEDY

    ctx = CountingContext(raw_ctx)
    model = load(slice_path, backend="gl", gl_context=ctx)
    try:
        per_cache = 2 * model.config.n_layers  # keys and values, one buffer per layer each
        warm = Scheduler(model).session(sampler=GREEDY, n_ctx=32)
        warm.ask("Hi", max_tokens=2).result()  # scratch buffers grow to their size here
        warm.close()
        warm.close()  # a second close does nothing
        base = len(ctx.live())

        sched = Scheduler(model)
        a, b = (sched.session(sampler=GREEDY, n_ctx=32, name=n) for n in "ab")
        for s in (a, b):
            s.ask("Hello", max_tokens=2).result()
        assert len(ctx.live()) == base + 2 * per_cache
        b.close()
        assert len(ctx.live()) == base + per_cache and b.closed
        with pytest.raises(RuntimeError, match="'b' was removed"):
            b.ask("Still there?")

        del a, b, s, sched  # no close: the game just drops its scheduler
        gc.collect()
        other = Scheduler(model).session(sampler=GREEDY, n_ctx=32)  # the next GL call frees a's
        assert len(ctx.live()) == base + per_cache
        other.close()
        assert len(ctx.live()) == base
    finally:
        model.close()
