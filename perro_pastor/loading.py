"""Loading a model without freezing a frame: ``load_async`` returns a ``LoadTask``.

    task = perro_pastor.load_async("default", on_progress=lambda t: print(t.phase, t.fraction))
    while not task.done:              # once per frame, on the GL thread
        task.poll(budget_ms=4.0)      # or: load_async(..., scheduler=sched), then sched.tick()
        draw_loading_screen(task.fraction, task.phase)
    model = task.model                # or task.error: the ModelFormatError a load() would raise

The work is split by where it may run:
- a worker thread opens and validates the file (memory-mapped; nothing is read whole), builds the
  config, the weight table and the tokenizer, then prepares the weights one tensor at a time: for
  the gl backend the host payload (validation + the NumPy repack, ``gl.buffers.prepare_weight``),
  for the cpu backend the dequantized matrix in the cpu backend's cache;
- the GL thread (the caller of ``poll``/``steps``) creates the context wrapper, writes each payload
  into its buffers a few MB per step, then compiles the programs, one dispatch per step.
The worker stays at most about one tensor ahead of the uploads (``payload_queue``), and gives
the file's pages back to the OS after each tensor (``madvise``), so loading never holds the whole
file in RAM. NumPy releases the GIL in its copies, so the worker mostly runs beside the frame.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .backend import IDLE
from .float_weights import DEFAULT_CACHE_BUDGET
from .formats import open_model_file  # (imports every reader here, not on the worker, where each
# import held the GIL, and so the frame, ~10 ms)
from .model import BACKENDS, Model, ModelParts, make_backend, open_gl
from .paths import resolve_model
from .payload_queue import PayloadQueue
from .scheduler import Scheduler
from .threads import frequent_gil_handover

PHASES = ("opening", "reading", "uploading", "compiling", "ready", "failed", "cancelled")
CHUNK_BYTES = 2 << 20  # written per step: ~1 ms of memcpy into a llvmpipe buffer
MIN_IN_FLIGHT = 8 << 20  # the worker may run this far ahead of the uploads even for small tensors
OPEN_SHARE, WEIGHTS_SHARE = 0.05, 0.85  # of ``fraction``; compiling gets the rest
WARM_UP_STEPS_PER_LAYER = 40  # a guess for ``fraction`` while compiling (clamped, never past 1)


class LoadCancelled(Exception):
    """Raised inside the worker to unwind it after ``LoadTask.cancel``."""


class LoadTask:
    """One model being loaded; see the module docstring. Every attribute is safe to read from
    the frame loop at any time."""

    def __init__(self, name_or_path: str | Path, backend: str = "auto", gl_context=None,
                 tokenizer_path: str | Path | None = None, budget_ms: float = 4.0,
                 on_progress: Callable[["LoadTask"], None] | None = None, dtype=np.float32,
                 cpu_cache_bytes: int = DEFAULT_CACHE_BUDGET, chunk_bytes: int = CHUNK_BYTES,
                 clock: Callable[[], float] = time.perf_counter):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        self.name, self.backend, self.gl_context = str(name_or_path), backend, gl_context
        self.tokenizer_path, self.budget_ms, self.on_progress = tokenizer_path, budget_ms, on_progress
        self.dtype, self.cpu_cache_bytes, self.chunk_bytes, self.clock = dtype, cpu_cache_bytes, chunk_bytes, clock
        self.phase = "opening"
        self.bytes_done = self.bytes_total = self.tensors_done = self.tensors_total = 0
        self.model: Model | None = None
        self.error: BaseException | None = None
        self.started = clock()
        self.load_s: float | None = None
        self._fraction = 0.0
        self._warm_steps = 0
        self._lock = threading.Condition()
        self._cancel = threading.Event()
        self._decided = threading.Event()  # the GL thread chose the backend (gl needs a context first)
        self._imported = threading.Event()  # the worker imported the gl modules (PyOpenGL: ~1 s)
        self._file = None  # the open model file, once the worker has read and checked it ...
        self._parts: ModelParts | None = None  # ... with its config, weight table and tokenizer
        self._cpu = None  # the cpu backend, made on the worker
        self._payloads = PayloadQueue(self._lock)  # prepared on the worker, uploaded here
        self._worker_error: BaseException | None = None
        self._worker_done = False
        self._glctx = None
        self._gl = None  # the GlTransformer being built
        self._warm: Iterator[None] | None = None  # its warm-up steps
        self._runner: Scheduler | None = None  # what ``poll`` ticks (without a game's scheduler)
        self._thread = threading.Thread(target=self._work, name=f"load {self.name}", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------
    # what a loading screen reads

    @property
    def done(self) -> bool:
        return self.phase in ("ready", "failed", "cancelled")

    @property
    def fraction(self) -> float:
        """0..1, never decreasing; 1.0 exactly when ready."""
        return self._fraction

    @property
    def in_flight_bytes(self) -> int:
        """Host payloads prepared and not yet uploaded."""
        return self._payloads.in_flight_bytes

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the pace so far (None before there is a pace to go by)."""
        if self.done:
            return 0.0
        f = self._fraction
        return None if f < 0.01 else (self.clock() - self.started) * (1.0 - f) / f

    # -------------------------------------------------------------------------
    # driving it (GL thread)

    def steps(self) -> Iterator[None]:
        """The GL-thread work as a generator, one bounded step per ``next`` (for
        ``Scheduler.submit``). Returns the model, or None when loading failed or was cancelled
        (``error`` says why); it never raises for a bad file, so the frame loop keeps running."""
        try:
            yield from self._gl_steps()
        except LoadCancelled:
            pass
        except Exception as exc:  # noqa: BLE001 -- reported on the task, not raised into the game
            self._fail(exc)
        return self.model

    def poll(self, budget_ms: float | None = None) -> Model | None:
        """Run GL-thread steps for about ``budget_ms`` (default: the task's); call once per frame.
        Returns the model once it is ready. One step may overrun the budget (a program compile).
        The steps run as the only job of a scheduler of their own (one budget loop for all)."""
        if self.done:
            return self.model
        if self._runner is None:
            self._runner = Scheduler(None, clock=self.clock)
            self._runner.submit(self.steps(), name=f"load {self.name}")
        self._runner.tick(self.budget_ms if budget_ms is None else budget_ms)
        return self.model

    def wait(self) -> Model:
        """Drive the task to the end on this thread and return the model (or raise its error)."""
        while not self.done:
            if self.poll(1000.0) is None and not self.done:
                time.sleep(0.001)
        if self.error is not None:
            raise self.error
        return self.model

    def cancel(self) -> None:
        """Stop loading: frees every GL object made so far now (call it on the GL thread); the
        worker stops at its next check (between chunks of one tensor) and closes the file."""
        if self.done:
            return
        self._cancel.set()
        self._decided.set()
        self._release_partial()
        self._set_phase("cancelled")

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread to end; True once it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -------------------------------------------------------------------------
    # GL thread

    def _gl_steps(self) -> Iterator[None]:
        while not self._imported.is_set():  # importing on this thread would freeze the frame
            yield self._idle()
        self._choose_backend()
        while self._parts is None:  # open, validate, tokenizer: all on the worker
            self._check()
            yield self._idle()
        parts = self._parts
        if self.backend == "cpu":
            while not self._worker_done:
                self._check()
                yield self._idle()
            self._check()
            return self._ready_with(Model(self._file, parts, self._cpu))
        self._set_phase("uploading")
        from .gl.forward import GlTransformer  # (the worker imported it: _import_gl)
        self._gl = GlTransformer.for_loading(self._glctx, self._file, parts.config)
        yield from self._gl.upload_steps(parts.weights, self._next_prepared(), self.chunk_bytes, self._uploaded)
        self._check()
        self._set_phase("compiling")
        self._warm = self._gl.warm_up_steps()  # held, so cancel can close it (it owns a KV cache)
        for _ in self._warm:
            self._warm_steps += 1
            expected = WARM_UP_STEPS_PER_LAYER * parts.config.n_layers
            self._advance(OPEN_SHARE + WEIGHTS_SHARE + (1 - OPEN_SHARE - WEIGHTS_SHARE) * min(0.99, self._warm_steps / expected))
            yield
            self._check()
        model = Model(self._file, parts, self._gl)
        self._gl, self._warm = None, None
        self._ready_with(model)

    def _choose_backend(self) -> None:
        """gl and auto need a GL 4.3 context first, made on this thread (``model.open_gl``)."""
        try:
            self._glctx = open_gl(self.backend, self.gl_context)
            self.backend = "cpu" if self._glctx is None else "gl"
        finally:
            self._decided.set()

    def _next_prepared(self) -> Iterator:
        """Prepared payloads from the worker, or None while the next is not ready (after waiting
        half a millisecond for it: ``upload_steps`` then yields ``IDLE``)."""
        while True:
            self._check()
            p = self._payloads.take()
            if p is None:
                self._idle()
            yield p

    def _idle(self) -> str:
        """A step with nothing to do yet: wait up to half a millisecond for the worker, then tell
        the scheduler to leave this job until the next tick (``IDLE``)."""
        with self._lock:
            self._lock.wait(0.0005)
        return IDLE

    def _uploaded(self, nbytes: int) -> None:
        """Progress of the current upload; bytes count the payload (close to the file's bytes)."""
        self._payloads.uploaded(nbytes)
        self._add_bytes(nbytes)

    def _ready_with(self, model: Model) -> Model:
        self.model = model
        self.load_s = self.clock() - self.started
        self.tensors_done = self.tensors_total
        self._advance(1.0)
        self._set_phase("ready")
        return model

    def _check(self) -> None:
        if self._cancel.is_set():
            raise LoadCancelled
        if self._worker_error is not None:
            raise self._worker_error

    def _fail(self, exc: BaseException) -> None:
        self._cancel.set()  # stops the worker too
        self._decided.set()
        self._release_partial()
        self.error = exc
        self._set_phase("failed")

    def _release_partial(self) -> None:
        """Free the GL objects of a half-built backend, and the file once the worker is out."""
        gl, self._gl = self._gl, None
        warm, self._warm = self._warm, None
        if warm is not None:
            warm.close()  # frees the warm-up's KV cache and LoRA pair
        if gl is not None:
            gl.release()
        elif self._glctx is not None:
            self._glctx.release()  # frees a context we created; a game's context is left alone
        self._glctx = None
        self._payloads.clear()
        with self._lock:
            if self._worker_done and self._file is not None:
                self._file.close()

    # -------------------------------------------------------------------------
    # worker thread

    def _work(self) -> None:
        with frequent_gil_handover():  # (the GGUF string arrays, the vocabulary are Python work)
            self._work_steps()

    def _work_steps(self) -> None:
        file = None
        try:
            if self.backend != "cpu":
                _import_gl()
            self._imported.set()
            file = open_model_file(resolve_model(self.name), self.tokenizer_path)
            parts = ModelParts.read(file)
            while not self._decided.wait(0.05):
                pass
            if self._cancel.is_set():
                raise LoadCancelled
            if self.backend == "gl":
                from .gl.upload import upload_order  # (imported by _import_gl above)
                tensors = upload_order(parts.weights)
            else:
                self._cpu = make_backend("cpu", file, parts.config, parts.weights, dtype=self.dtype,
                                         cpu_cache_bytes=self.cpu_cache_bytes)
                tensors = parts.weights.matrices()
            self.tensors_total = len(tensors)
            self.bytes_total = sum(t.nbytes for t in tensors)
            self._advance(OPEN_SHARE)
            self._set_phase("reading")
            with self._lock:
                self._file, self._parts = file, parts
                self._lock.notify_all()
            if self.backend == "gl":
                self._prepare_gl(file, tensors, parts.config)
            else:
                self._prepare_cpu(file, tensors)
        except LoadCancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 -- handed to the GL thread, which reports it
            self._worker_error = exc
        finally:
            self._imported.set()
            with self._lock:
                self._worker_done = True
                if file is not None and (self._cancel.is_set() or self._worker_error is not None):
                    file.close()
                self._lock.notify_all()

    def _prepare_gl(self, file, tensors, cfg) -> None:
        from .gl.upload import prepare_matrix
        self._payloads.limit_bytes = max(MIN_IN_FLIGHT, max(t.nbytes for t in tensors))
        for t in tensors:
            if not self._payloads.wait_for_room(t.nbytes, self._cancel.is_set):
                raise LoadCancelled
            p = prepare_matrix(file, t, self._glctx.weight_part_bytes, cfg)
            file.release_pages(t.name)
            self._payloads.put(p, p.nbytes)
            del p
            self.tensors_done += 1

    def _prepare_cpu(self, file, tensors) -> None:
        for t in tensors:
            if self._cancel.is_set():
                raise LoadCancelled
            self._cpu.prepare(t)
            file.release_pages(t.name)
            self.tensors_done += 1
            self._add_bytes(t.nbytes)
            time.sleep(0)  # hand the GIL to the frame loop between matrices

    # -------------------------------------------------------------------------
    # progress

    def _add_bytes(self, n: int) -> None:
        self.bytes_done = min(self.bytes_total, self.bytes_done + n)
        if self.bytes_total:
            self._advance(OPEN_SHARE + WEIGHTS_SHARE * self.bytes_done / self.bytes_total)

    def _advance(self, fraction: float) -> None:
        if fraction > self._fraction:
            self._fraction = min(1.0, fraction)
            self._notify()

    def _set_phase(self, phase: str) -> None:
        if self.phase not in ("ready", "failed", "cancelled"):
            self.phase = phase
            self._notify()

    def _notify(self) -> None:
        """``on_progress(task)``; the worker calls it too, so a callback must only store values."""
        if self.on_progress is not None:
            try:
                self.on_progress(self)
            except Exception as exc:  # noqa: BLE001 -- a broken callback must not break loading
                print(f"perro_pastor: on_progress failed: {exc}", file=sys.stderr)


def _import_gl() -> None:
    """Import what the GL thread will need, here on the worker: the gl backend and its warm-up,
    the shader package, and PyOpenGL, which ``gl.context.read_limits`` imports to query limits
    (about a second on a busy machine), with the NumPy array handler it loads at its first call
    (seen on the frame thread by ``benchmarks/trace_loading_ticks.py``)."""
    from . import shaders  # noqa: F401
    from .gl import forward, warm_up  # noqa: F401
    try:
        from OpenGL import GL  # noqa: F401
        from OpenGL.arrays import numpymodule  # noqa: F401
    except Exception:  # noqa: BLE001 -- optional; read_limits has fallbacks
        pass


def load_async(name_or_path: str | Path, scheduler=None, backend: str = "auto", gl_context=None,
               tokenizer_path: str | Path | None = None, budget_ms: float = 4.0,
               on_progress: Callable[[LoadTask], None] | None = None, **options) -> LoadTask:
    """Start loading a model (``default``, a path, or a name in the model folder) and return its
    ``LoadTask`` at once. With ``scheduler`` the task's GL steps run as a scheduler job; without,
    call ``task.poll(budget_ms)`` once per frame. ``options``: ``dtype``, ``cpu_cache_bytes``,
    ``chunk_bytes``, ``clock`` (see ``LoadTask``)."""
    task = LoadTask(name_or_path, backend, gl_context, tokenizer_path, budget_ms, on_progress, **options)
    if scheduler is not None:
        scheduler.submit(task.steps(), priority=0, name=f"load {task.name}")
    return task
