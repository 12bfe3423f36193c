"""How the engine shares the CPU with a game: the threads the cpu backend's work may take, BLAS
(through threadpoolctl) and the compiled kernels (numba, whose count is per calling thread), set
through ``Model.limit_threads``; and a prompt GIL hand-over for Python work on a background
thread (the loader's worker)."""

from __future__ import annotations

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


def steps_on_blas_threads(steps: Iterator[None], n_threads: int) -> Generator[None, None, object]:
    """Run the generator ``steps`` with BLAS limited to ``n_threads`` while each step runs; the
    setting is restored between steps, so work interleaved with them keeps its own. Returns what
    ``steps`` returns. ~30 us a step."""
    controller = blas_controller()
    while True:
        with controller.limit(limits=n_threads):
            try:
                next(steps)
            except StopIteration as done:
                return done.value
        yield


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
