"""The gl backend's figures for ``perro-pastor bench``: where a decode step's time goes
(dispatches, mat-vecs, host Python, the dispatch-time tail, GPU time from a timer query).

The engine knows nothing of this: ``DispatchTimer`` wraps the ``run`` of a ``Kernels``' dispatcher
(every dispatch of the gl backend goes through it), and ``DecodeFigures`` also wraps a
``GlTransformer``'s ``forward_steps``, from the outside, for as long as they are attached.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .backend import Segment, run_to_end

DURATIONS_KEPT = 200_000


@dataclass
class DispatchStats:
    """Per-dispatch wall time. On a synchronous driver (llvmpipe runs the work inside
    glDispatchCompute) this is the kernel's time; on a real GPU it is only the submission."""
    count: int = 0  # dispatches made (a dry run's or an empty one's are timed, not counted)
    seconds: float = 0.0
    max_seconds: float = 0.0
    by_program: dict[str, float] = field(default_factory=dict)
    # the latest dispatches' times, for percentiles (bounded: a game runs for hours)
    durations: deque = field(default_factory=lambda: deque(maxlen=DURATIONS_KEPT))

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.durations, q)) * 1000 if self.durations else 0.0


class DispatchTimer:
    """Times and counts every dispatch of ``kernels`` (a ``gl.kernels.Kernels``) while attached
    (two perf_counter calls each: negligible next to the ~20 us a dispatch costs), by shader, so
    mat-vec time can be told from everything else. ``names`` collects the shader of each
    dispatch made while it is a list (``DecodeFigures`` reads a pass's with it)."""

    def __init__(self, kernels) -> None:
        self.gpu = kernels.gpu
        self.stats = DispatchStats()
        self.names: list[str] | None = None
        self._inner = self.gpu.run
        self.gpu.run = self._run  # the launchers look ``run`` up on every call

    @property
    def dispatches(self) -> int:
        return self.stats.count

    def _run(self, prog, gx: int, gy: int = 1, gz: int = 1, **uniforms: object) -> None:
        start = time.perf_counter()
        self._inner(prog, gx, gy, gz, **uniforms)
        dt = time.perf_counter() - start
        t, name = self.stats, self.gpu.program_names.get(id(prog), "?")
        if gx and gy and gz and not self.gpu.dry_run:
            t.count += 1
            if self.names is not None:
                self.names.append(name)
        t.seconds += dt
        t.max_seconds = max(t.max_seconds, dt)
        t.durations.append(dt)
        t.by_program[name] = t.by_program.get(name, 0.0) + dt

    def detach(self) -> None:
        """Stop timing: the dispatcher's own ``run`` again."""
        if self.gpu.run == self._run:
            del self.gpu.run


class DecodeFigures:
    """Figures of the decode steps (one token per segment) a ``GlTransformer`` runs through
    ``forward_steps`` (so ``forward`` too) while attached: ``stats()`` is what ``perro-pastor
    bench --backend gl`` adds to its row."""

    def __init__(self, transformer) -> None:
        self.tr = transformer
        self.timer = DispatchTimer(transformer.kernels)
        self.tokens, self.passes, self.wall, self.dispatches = 0, 0, 0.0, 0
        self.dispatch_s, self.matvec_s, self.layer_dispatches = 0.0, 0.0, 0.0
        self._inner = transformer.forward_steps
        transformer.forward_steps = self._forward_steps

    @classmethod
    def attach(cls, transformer) -> "DecodeFigures | None":
        """Figures for a gl transformer from now on; None for another backend (no dispatches)."""
        return cls(transformer) if getattr(transformer, "name", None) == "gl" else None

    def _forward_steps(self, segments: list[Segment], *args, **kwargs):
        if any(len(seg.tokens) != 1 for seg in segments):
            return (yield from self._inner(segments, *args, **kwargs))
        t = self.timer.stats
        count0, seconds0, mv0, start = t.count, t.seconds, self._matvec_seconds(), time.perf_counter()
        self.timer.names = names = []
        try:
            result = yield from self._inner(segments, *args, **kwargs)
        finally:
            self.timer.names = None
        self.wall += time.perf_counter() - start
        self.tokens += len(segments)
        self.passes += 1
        self.dispatches += t.count - count0
        self.dispatch_s += t.seconds - seconds0
        self.matvec_s += self._matvec_seconds() - mv0
        self.layer_dispatches = self._per_layer(names)
        return result

    def _matvec_seconds(self) -> float:
        """Time in the decode mat-vecs so far: matvec.comp's, or the fused kernel's (gl/fused_ops)."""
        by = self.timer.stats.by_program
        return by.get("matvec.comp", 0.0) + by.get("matvec_fused.comp", 0.0)

    def _per_layer(self, names: list[str]) -> float:
        """Dispatches per layer of one decode pass: those from the first layer's attention to the
        last layer's, over the layers between (each layer of a one-token pass attends once)."""
        at = [i for i, name in enumerate(names) if name == "attention.comp"]
        n_layers = len(self.tr.weights.layers)
        if len(at) != n_layers or n_layers < 2:
            return len(names) / max(1, n_layers)  # (an upper bound: embedding and classifier too)
        return (at[-1] - at[0]) / (n_layers - 1)

    def detach(self) -> None:
        """Stop measuring: the transformer's own ``forward_steps`` and dispatches again."""
        if self.tr.forward_steps == self._forward_steps:
            del self.tr.forward_steps
        self.timer.detach()

    def stats(self) -> dict:
        """Figures of the decode steps run since attaching, for ``perro-pastor bench``."""
        tr, t = self.tr, self.timer.stats
        n = max(1, self.tokens)
        matvec_gb_s = None
        if self.matvec_s > 0:
            w = tr.weights
            bytes_per_token = sum(m.rows * m.row_bytes for layer in w.layers
                                  for m in (layer.wq, layer.wk, layer.wv, layer.wo, layer.w1, layer.w2, layer.w3))
            bytes_per_token += w.wcls.rows * w.wcls.row_bytes
            matvec_gb_s = round(bytes_per_token * self.passes / self.matvec_s / 1e9, 3)
        row = {
            "backend": tr.name,
            "gl_renderer": tr.glctx.limits.renderer,
            "kv_cache": "f16" if tr.kv_f16 else "f32",
            "dispatches_per_token": round(self.dispatches / n, 1),
            "dispatches_per_layer": self.layer_dispatches,
            "max_dispatch_ms": round(t.max_seconds * 1000, 3),
            # the max is one sample of the machine's scheduling jitter; these show the typical tail
            "dispatch_ms_p99": round(t.percentile_ms(99), 3),
            "dispatch_ms_p999": round(t.percentile_ms(99.9), 3),
            "dispatches_over_3ms": sum(1 for seconds in t.durations if seconds > 0.003),
            "dispatches_timed": len(t.durations),
            "host_ms_per_token": round((self.wall - self.dispatch_s) / n * 1000, 3),
            "dispatch_ms_per_token": round(self.dispatch_s / n * 1000, 3),
            "matvec_ms_per_token": round(self.matvec_s / n * 1000, 3),
        }
        row["gpu_ms_per_token"] = gpu_ms_per_token(tr, self._inner)  # steps not counted above
        row["matvec_gb_s"] = matvec_gb_s
        return row


def gpu_ms_per_token(tr, forward_steps, steps: int = 3) -> float | None:
    """GPU time of a few decode steps of ``tr`` (a GlTransformer), run by ``forward_steps``, from
    a GL timer query; None where the driver has none."""
    try:
        kv = tr.new_cache(steps + 1)
        query = tr.glctx.ctx.query(time=True)
        with query:
            for pos in range(steps):
                run_to_end(forward_steps([Segment(np.zeros(1, np.int64), pos, kv)]))
        elapsed = query.elapsed
        kv.release()
    except Exception:
        return None
    return round(elapsed / 1e6 / steps, 3) if elapsed and elapsed > 1000 else None
