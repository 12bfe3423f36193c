"""The gl backend's figures for ``perro-pastor bench``: where a decode step's time goes
(dispatches, mat-vecs, host Python, the dispatch-time tail, GPU time from a timer query)."""

from __future__ import annotations

import numpy as np

from ..backend import Segment


def decode_figures(tr) -> dict:
    """Figures of the decode steps run since construction, for ``perro-pastor bench``."""
    d, t = tr.decode, tr.kernels.timing
    n = max(1, d["tokens"])
    matvec_gb_s = None
    if d["matvec_s"] > 0:
        bytes_per_token = sum(w.rows * w.row_bytes for layer in tr.layers
                              for w in (layer.wq, layer.wk, layer.wv, layer.wo, layer.w1, layer.w2, layer.w3))
        bytes_per_token += tr.wcls.rows * tr.wcls.row_bytes
        matvec_gb_s = round(bytes_per_token * d["passes"] / d["matvec_s"] / 1e9, 3)
    return {
        "backend": tr.name,
        "gl_renderer": tr.glctx.limits.renderer,
        "kv_cache": "f16" if tr.kv_f16 else "f32",
        "dispatches_per_token": round(d["dispatches"] / n, 1),
        "dispatches_per_layer": d["layer_dispatches"],
        "max_dispatch_ms": round(t.max_seconds * 1000, 3),
        # the max is one sample of the machine's scheduling jitter; these show the typical tail
        "dispatch_ms_p99": round(t.percentile_ms(99), 3),
        "dispatch_ms_p999": round(t.percentile_ms(99.9), 3),
        "dispatches_over_3ms": sum(1 for seconds in t.durations if seconds > 0.003),
        "dispatches_timed": len(t.durations),
        "host_ms_per_token": round((d["wall"] - d["dispatch_s"]) / n * 1000, 3),
        "dispatch_ms_per_token": round(d["dispatch_s"] / n * 1000, 3),
        "matvec_ms_per_token": round(d["matvec_s"] / n * 1000, 3),
        "gpu_ms_per_token": gpu_ms_per_token(tr),
        "matvec_gb_s": matvec_gb_s,
    }

def gpu_ms_per_token(tr, steps: int = 3) -> float | None:
    """GPU time of a few decode steps from a GL timer query; None where the driver has none."""
    try:
        kv = tr.new_cache(steps + 1)
        query = tr.glctx.ctx.query(time=True)
        with query:
            for pos in range(steps):
                run = tr._pass([Segment(np.zeros(1, np.int64), pos, kv)], False, None)
                for _ in run:
                    pass
        elapsed = query.elapsed
        kv.release()
    except Exception:
        return None
    return round(elapsed / 1e6 / steps, 3) if elapsed and elapsed > 1000 else None

