"""Loading a model without freezing a frame, for the loading screen: a thin use of
``perro_pastor.load_async``.

Start it, call ``poll()`` once per frame, draw ``progress`` (0..1) and ``phase``, take ``model``
when ``done``. The library does the work (parsing and weight preparation on a worker thread, GL
uploads and program compiles a budgeted step at a time on this thread); this wrapper only adds
the chat template, a sandboxed Jinja compile (~0.1-0.5 s with the import) built on a thread of
its own once the model is there, and shared by every villager's session. The same thread then
warms the villagers' reply grammar (actions.warm_grammar: each grammar state's first mask costs
10-50 ms, better spent under the loading screen than in the first reply's frames).
"""

from __future__ import annotations

import threading
import time

from perro_pastor.chat import template_for_model
from perro_pastor.loading import load_async
from perro_pastor.threads import frequent_gil_handover
from perro_pastor.model import Model

from .actions import warm_grammar

BUDGET_MS = 6.0  # of each frame spent on loading steps (the loading screen draws in ~3 ms)
TEMPLATE_SHARE = 0.02  # of the progress bar kept for the chat template


class ModelLoader:
    def __init__(self, name: str, backend: str = "auto", gl_context=None):
        self.task = load_async(name, backend=backend, gl_context=gl_context, budget_ms=BUDGET_MS)
        self.model: Model | None = None
        self.template = None  # the model's ChatTemplate, built off the main thread
        self._template_error: Exception | None = None
        self._thread: threading.Thread | None = None
        self.grammar_warm_s: float | None = None

    @property
    def progress(self) -> float:
        return 1.0 if self.model is not None else self.task.fraction * (1.0 - TEMPLATE_SHARE)

    @property
    def phase(self) -> str:
        if self.model is not None:
            return f"ready ({self.model.backend})"
        if self._thread is not None:
            return "preparing the chat template and the reply grammar"
        return self.task.phase

    @property
    def error(self) -> Exception | None:
        return self.task.error or self._template_error

    @property
    def load_s(self) -> float | None:
        return self.task.load_s

    @property
    def done(self) -> bool:
        return self.model is not None or self.error is not None or self.task.phase == "cancelled"

    def cancel(self) -> None:
        self.task.cancel()

    def poll(self) -> Model | None:
        """Call once per frame on the main (GL) thread; returns the model once it is ready."""
        if self.done:
            return self.model
        model = self.task.poll()
        if model is None:
            return None
        if self._thread is None:
            self._thread = threading.Thread(target=self._build_template, args=(model,), daemon=True)
            self._thread.start()
        if self._thread.is_alive() or self._template_error is not None:
            return None
        self.model = model
        return model

    def _build_template(self, model: Model) -> None:
        try:
            tok = model.tokenizer
            with frequent_gil_handover():  # (or the loading screen's GL calls wait 5 ms each)
                self.template = template_for_model(model.file.metadata, tok.tokens, tok.tokens[tok.bos_id],
                                                   tok.tokens[tok.eos_id])
                t0 = time.perf_counter()
                warm_grammar(tok)
                self.grammar_warm_s = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 -- shown by the game, which keeps running
            self._template_error = exc
