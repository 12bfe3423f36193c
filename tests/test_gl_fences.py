"""Fences (issue 19): a pass fences its last dispatch, and the scheduler runs nothing more of
the gl backend until the fence has signalled: it waits for it only within its budget."""

import time

import pytest

from perro_pastor.gl.fences import Fences
from perro_pastor.sampling import GREEDY
from perro_pastor.scheduler import Scheduler

moderngl = pytest.importorskip("moderngl")


def test_real_fences_signal_on_this_driver():
    """PyOpenGL's sync objects on moderngl's (current) EGL context, as a GPU would use them."""
    try:
        ctx = moderngl.create_standalone_context(require=430, backend="egl")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no GL 4.3 context: {exc}")
    try:
        fences = Fences(software=False)
        assert fences.ready()  # nothing pending
        assert fences.place()
        deadline = time.monotonic() + 5
        while not fences.ready():  # llvmpipe has finished already; a GPU would soon
            assert time.monotonic() < deadline
        assert fences.ready() and fences._sync is None
        fences.release()  # idempotent
        assert not Fences(software=True).place()  # a CPU renderer: nothing to fence
    finally:
        ctx.release()


class SlowFences:
    """A GPU that finishes each pass ``latency_s`` after its fence was placed."""

    def __init__(self, latency_s: float):
        self.latency_s, self.deadline, self.placed, self.waits = latency_s, 0.0, 0, []

    def place(self) -> bool:
        self.placed += 1
        self.deadline = time.perf_counter() + self.latency_s
        return True

    def ready(self, wait_s: float = 0.0) -> bool:
        remaining = self.deadline - time.perf_counter()
        if remaining <= 0:
            return True
        self.waits.append(wait_s)
        time.sleep(min(wait_s, remaining))
        return wait_s >= remaining

    def release(self) -> None:
        self.deadline = 0.0


def _slice_model():
    from model_slices import model_slice
    from perro_pastor.errors import BackendError
    from perro_pastor.model import load

    try:
        return load(model_slice("Q4_1", n_layers=2), backend="gl")
    except BackendError as exc:
        pytest.skip(f"no GL 4.3: {exc}")


def test_a_fence_that_will_not_signal_in_the_budget_ends_the_tick_without_waiting():
    model = _slice_model()
    try:
        want = Scheduler(model).session(sampler=GREEDY, n_ctx=64).ask("Hi", max_tokens=4, ignore_eos=True).result()
        slow = model.transformer.fences = SlowFences(latency_s=0.3)
        sched = Scheduler(model)
        reply = sched.session(sampler=GREEDY, n_ctx=64).ask("Hi", max_tokens=4, ignore_eos=True)
        held = 0
        while not reply.done:
            pending = slow.deadline - time.perf_counter() > 0.1
            start = time.perf_counter()
            steps = sched.tick(5.0)
            if pending:  # the GPU needs > 100 ms more: the 5 ms tick neither ran nor waited
                assert steps == 0 and time.perf_counter() - start < 0.05
                held += 1
        assert reply.text == want
        assert slow.placed == 4 and held >= 4  # a fence per pass, each held the scheduler
        assert all(w <= 0.005 for w in slow.waits)  # never asked to wait past the budget
    finally:
        model.close()


def test_a_fence_that_signals_within_the_budget_is_waited_for():
    """A fast GPU: the tick waits for each pass and goes on, several tokens in one tick."""
    model = _slice_model()
    try:
        want = Scheduler(model).session(sampler=GREEDY, n_ctx=64).ask("Hi", max_tokens=4, ignore_eos=True).result()
        slow = model.transformer.fences = SlowFences(latency_s=0.002)
        sched = Scheduler(model)
        reply = sched.session(sampler=GREEDY, n_ctx=64).ask("Hi", max_tokens=4, ignore_eos=True)
        ticks = 0
        while not reply.done:
            sched.tick(10_000.0)
            ticks += 1
        assert reply.text == want
        assert ticks == 1 and slow.placed == 4 and any(w > 0 for w in slow.waits)
    finally:
        model.close()
