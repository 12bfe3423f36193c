"""How the engine shares the CPU with a game: the threads the cpu backend's work may take, BLAS
(through threadpoolctl) and the compiled kernels (numba, whose count is per calling thread), set
through ``Model.limit_threads``; and a prompt GIL hand-over for Python work on a background
thread (the loader's worker)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Generator, Iterator

from threadpoolctl import ThreadpoolController

LOADING_SWITCH_INTERVAL_S = 0.0005  # GIL hand-over while the loader's worker runs


def blas_controller():
    """threadpoolctl's handle on the process's BLAS libraries, found once: the search walks every
    loaded shared library (3-15 ms), so do it before a frame needs it."""
    global _blas_controller
    if _blas_controller is None:
        _blas_controller = ThreadpoolController().select(user_api="blas")
    return _blas_controller


_blas_controller = None


def blas_threads_now() -> int:
    """How many threads BLAS uses now (its default: one per core, or what the environment set)."""
    return max((lib.num_threads for lib in blas_controller().lib_controllers), default=1)


BLAS_WORKER_TIMEOUT = 4  # OPENBLAS_THREAD_TIMEOUT's floor: workers sleep right after a call


def let_blas_workers_sleep_at_once() -> None:
    """Ask OpenBLAS's workers to sleep right after each call instead of spinning ~0.1 s for the
    next one, taking a core from whatever runs next. OpenBLAS reads this when NumPy loads, so
    call it before; a setting the user made wins."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", str(BLAS_WORKER_TIMEOUT))


def blas_workers_sleep_at_once() -> bool:
    """Whether OpenBLAS's workers sleep right after a call (``let_blas_workers_sleep_at_once``,
    or the user's own ``OPENBLAS_THREAD_TIMEOUT`` at the floor)."""
    try:
        return int(os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")) <= BLAS_WORKER_TIMEOUT
    except ValueError:
        return False


def steps_on_threads(steps: Iterator[None], blas_threads: int | None,
                     kernel_threads: int | None = None) -> Generator[None, None, object]:
    """Run the generator ``steps`` with BLAS limited to ``blas_threads`` and the compiled kernels
    it calls to ``kernel_threads`` while each step runs (None: as they are); both settings are
    restored between steps, so work interleaved with them keeps its own. Returns what ``steps``
    returns. ~30 us a step."""
    while True:
        with blas_limited(blas_threads), kernels_limited(kernel_threads):
            try:
                next(steps)
            except StopIteration as done:
                return done.value
        yield


@contextmanager
def blas_limited(n_threads: int | None):
    if n_threads is None:
        yield
        return
    with blas_controller().limit(limits=n_threads):
        yield


@contextmanager
def kernels_limited(n_threads: int | None):
    if n_threads is None:
        yield
        return
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def limit_kernel_threads(n_threads: int | None) -> None:
    """The compiled kernels' threads when called from this thread: ``n_threads``, or all of
    numba's (one per core) for None."""
    import numba  # only with the compiled kernels, which need it anyway
    numba.set_num_threads(n_threads or numba.config.NUMBA_NUM_THREADS)


@contextmanager
def frequent_gil_handover():
    """For a background thread that runs Python while a game draws: a thread waiting for the
    GIL (the frame thread, back from any GL call) gets it after one switch interval, 5 ms by
    default, more than a tick's budget; within this block it is ``LOADING_SWITCH_INTERVAL_S``."""
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, LOADING_SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(switch_interval)
