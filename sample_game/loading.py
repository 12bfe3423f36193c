"""Loading a model without freezing a frame, for the loading screen.

The library has no ``load_async`` yet, so this module stands in for it with the same shape a
frame loop needs: start it, call ``poll()`` once per frame, draw ``progress`` (0..1) and
``phase``, take ``model`` when ``done``. When ``perro_pastor.load_async`` lands, only this
file changes.

How the work is split:
- a worker thread opens and validates the file, builds the config, the weight table and the
  tokenizer (``Model`` on the cpu backend, which costs little to construct), then, for the cpu
  backend, dequantizes every weight matrix into the cpu backend's cache one matrix at a time
  (the first generation would otherwise stall ~4 s of frames doing it);
- for the gl/auto backends the GL objects must be created on the thread that owns the context,
  so the main thread swaps in ``make_backend`` with the window's context in one ``poll``.
NumPy releases the GIL in its array loops, so the worker mostly runs beside the frame loop.
"""

from __future__ import annotations

import threading
import time

from perro_pastor.chat import template_for_model
from perro_pastor.model import Model, make_backend
from perro_pastor.formats import open_model_file
from perro_pastor.paths import resolve_model


class ModelLoader:
    def __init__(self, name: str, backend: str = "auto", gl_context=None):
        self.name, self.backend, self.gl_context = name, backend, gl_context
        self.progress, self.phase = 0.0, "starting"
        self.model: Model | None = None
        self.error: Exception | None = None
        self.started = time.perf_counter()
        self.load_s: float | None = None
        self._cancel = threading.Event()
        self._parsed: Model | None = None  # handed from the parsing thread to poll()
        self._warming: Model | None = None
        self.template = None  # the model's ChatTemplate, built off the main thread
        self._thread = threading.Thread(target=self._work, name=f"load {name}", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return self.model is not None or self.error is not None

    def cancel(self) -> None:
        self._cancel.set()

    def poll(self) -> Model | None:
        """Call once per frame on the main (GL) thread; returns the model once it is ready."""
        if self.done or self._thread.is_alive():
            return self.model
        if self._cancel.is_set():
            for m in (self._parsed, self._warming):
                if m is not None:
                    m.close()
            self.error = self.error or RuntimeError("loading cancelled")
            return None
        model, self._parsed = self._parsed, None
        if model is None:  # the worker has finished the cpu warm-up
            return self._finish(self._warming)
        if self.backend in ("gl", "auto"):
            self.phase = "uploading to the GPU"
            try:
                model.transformer = make_backend(self.backend, model.file, model.config,
                                                 model.weights, self.gl_context)
            except Exception as exc:  # BackendError, GL errors: report, keep the game running
                model.close()
                self.error = exc
                return None
        if model.backend != "cpu":
            return self._finish(model)
        self._warming = model  # cpu (asked for, or the fallback of auto): warm it in the background
        self._thread = threading.Thread(target=self._warm_cpu, args=(model,), daemon=True)
        self._thread.start()
        return None

    def _finish(self, model: Model) -> Model:
        self.progress, self.phase = 1.0, f"ready ({model.backend})"
        self.load_s = time.perf_counter() - self.started
        self.model = model
        return model

    # -------------------------------------------------------------------------
    # worker threads

    def _work(self) -> None:
        try:
            self.phase = "opening"
            path = resolve_model(self.name)
            file = open_model_file(path)
            self.progress, self.phase = 0.05, "reading tokenizer"
            try:
                model = Model(file, backend="cpu")
            except BaseException:
                file.close()
                raise
            # the chat template (a sandboxed Jinja compile, ~0.1-0.5 s with the import) is built
            # here once and shared by every villager's session
            self.phase = "preparing the chat template"
            tok = model.tokenizer
            self.template = template_for_model(model.file.metadata, tok.tokens, tok.tokens[tok.bos_id],
                                               tok.tokens[tok.eos_id])
            self.progress = 0.1
            self._parsed = model
        except Exception as exc:
            self.error = exc

    def _warm_cpu(self, model: Model) -> None:
        """Dequantize every matrix into the cpu backend's cache, reporting progress."""
        store, w = model.transformer.store, model.weights
        tensors = [getattr(layer, n) for layer in w.layers
                   for n in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")] + [w.wcls]
        for i, t in enumerate(tensors):
            if self._cancel.is_set():
                return
            self.phase = f"preparing weights {i + 1}/{len(tensors)}"
            store.matrix(t)
            self.progress = 0.1 + 0.9 * (i + 1) / len(tensors)
            time.sleep(0.001)  # hand the GIL to the frame loop between matrices
