"""A one-token pass recorded once and replayed: the launch plan of a session's decode steps.

The narrated pass (``GlTransformer._layers``) works out every launch in Python each time: which
program, which buffers at which bindings, which uniforms. A session's decode steps repeat exactly
the same launches token after token, except for the token and its position, and those the kernels
read from buffers (``Scratch.tokens`` and ``Scratch.positions``, written once per step). So the
first such pass on a cache runs while the dispatcher records every bind, dispatch and barrier it
makes (``Dispatcher.recording``), and the later ones replay the recorded calls, yielding where the
pass yielded: no resolving, no object churn per dispatch.

A recorded call holds the buffers it binds. The ``stamp`` names what would make one stale: the
path (fused or not), the dispatcher's scratch buffers (``Dispatcher.generation`` counts
replacements) and the activations' capacity (``Scratch`` replaces its buffers when it grows); a
plan whose stamp no longer matches is recorded again.
"""

from __future__ import annotations

from time import perf_counter
from typing import Callable, Generator

YIELD = None  # where the recorded pass yielded (a step boundary for the scheduler)


class DecodePlan:
    def __init__(self, stamp: tuple) -> None:
        self.stamp = stamp
        self.calls: list = []

    def record(self, gpu, steps: Generator) -> Generator:
        """Run ``steps`` (a pass) to its end while ``gpu`` records into this plan, yielding where it
        yields (recording only while the pass runs: other work between two steps is not recorded);
        returns its value."""
        while True:
            gpu.recording = self.calls
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            finally:
                gpu.recording = None
            self.calls.append(YIELD)
            yield

    def replay(self, yield_every_s: float = 0.0, still_valid: Callable[[], bool] = lambda: True) -> Generator:
        """Make the recorded calls again. ``yield_every_s`` 0: yield wherever the pass yielded (a
        CPU rasterizer runs each dispatch inside the call, so each is a frame's worth of work);
        above 0 (a GPU, where a dispatch is queued in microseconds): yield at the first such
        place after that much time since the last yield. Every yield is a scheduler step, ~10 us
        of bookkeeping: per dispatch, that was as much as the dispatch itself. Returns False, having
        stopped, when ``still_valid()`` says after a yield that work in between replaced a buffer the
        recording binds (the caller then runs the whole pass again, narrated); True at the end."""
        last = perf_counter()
        for call in self.calls:
            if call is not YIELD:
                call()
                continue
            if yield_every_s and perf_counter() - last < yield_every_s:
                continue
            yield
            if not still_valid():
                return False
            last = perf_counter()
        return True


def replay_or_record(kv, gpu, current: Callable[[], tuple], narrated: Generator,
                     yield_every_s: float) -> Generator:
    """A one-token pass on ``kv``: its recorded plan replayed when the plan's stamp is
    ``current()``, else the ``narrated`` pass, recorded as the cache's new plan (not during a
    warm-up's dry run, and kept only if nothing it binds was replaced meanwhile)."""
    stamp = current()
    plan = kv.plan if kv.plan is not None and kv.plan.stamp == stamp else None
    if plan is not None:
        replayed = yield from plan.replay(yield_every_s, lambda: current() == stamp)
        if not replayed:  # other work between two steps replaced a buffer it binds: again
            yield from narrated
    elif gpu.dry_run:  # (warm-up: compiles the same programs)
        yield from narrated
    else:
        plan = DecodePlan(stamp)
        yield from plan.record(gpu, narrated)
        if current() == stamp:  # (else a scratch buffer grew meanwhile)
            kv.plan = plan
