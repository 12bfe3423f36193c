"""Fences (issue 19): a pass fences its last dispatch, and the scheduler runs nothing more of
the gl backend until the fence has signalled, without ever waiting on it."""

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
    """A GPU that takes ``polls`` looks before a fence signals."""

    def __init__(self, polls: int):
        self.polls, self.pending, self.placed, self.refused = polls, 0, 0, 0

    def place(self) -> bool:
        self.placed += 1
        self.pending = self.polls
        return True

    def ready(self) -> bool:
        if self.pending:
            self.pending -= 1
            self.refused += 1
            return False
        return True

    def release(self) -> None:
        self.pending = 0


def test_a_pending_fence_holds_the_scheduler_without_blocking():
    from model_slices import model_slice
    from perro_pastor.errors import BackendError
    from perro_pastor.model import load

    try:
        model = load(model_slice("Q4_1", n_layers=2), backend="gl")
    except BackendError as exc:
        pytest.skip(f"no GL 4.3: {exc}")
    try:
        want = Scheduler(model).session(sampler=GREEDY, n_ctx=64).ask("Hi", max_tokens=4, ignore_eos=True).result()
        slow = model.transformer.fences = SlowFences(polls=3)
        sched = Scheduler(model)
        reply = sched.session(sampler=GREEDY, n_ctx=64).ask("Hi", max_tokens=4, ignore_eos=True)
        idle_ticks = 0
        while not reply.done:
            pending = slow.pending
            start = time.perf_counter()
            steps = sched.tick(1000.0)
            if pending:  # the fence was pending when the tick began: nothing ran, nothing waited
                assert steps == 0 and time.perf_counter() - start < 0.05
                idle_ticks += 1
        assert reply.text == want
        assert slow.placed == 4 and slow.refused == 3 * 4 and idle_ticks >= 4  # a fence per pass
    finally:
        model.close()
