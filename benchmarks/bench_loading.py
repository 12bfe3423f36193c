"""Loading figures (docs/loading.md): time to ready, per-tick wall time under a budget, peak RSS.

    .venv/bin/python benchmarks/bench_loading.py [--model default] [--backend gl] [--sync]
                                                 [--budget-ms 4] [--tracemalloc]

Run each configuration in a fresh process (peak RSS is per process). The async run drives
``load_async`` through a ``Scheduler`` with ``tick(budget_ms)`` and sleeps the rest of a 240 Hz
frame between ticks, like a game. RSS: ``ru_maxrss`` (peak) and VmRSS after loading (steady).
``--tracemalloc`` also reports the peak of Python + NumPy allocations (slower)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import tracemalloc

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def jitter_baseline(n: int = 300) -> dict:
    """The same fixed piece of work (~2 ms of NumPy on a quiet core) timed n times, with a frame's
    sleep between: how much a busy machine alone stretches a step."""
    a = np.random.default_rng(0).standard_normal(200_000)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        for _ in range(8):
            np.sort(a[:25_000])
        times.append((time.perf_counter() - t0) * 1000)
        time.sleep(1 / 240)
    t = np.array(times)
    return dict(median_ms=round(float(np.median(t)), 1), p99_ms=round(float(np.percentile(t, 99)), 1),
                max_ms=round(float(t.max()), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--backend", default="gl", choices=("gl", "cpu"))
    ap.add_argument("--sync", action="store_true", help="time perro_pastor.load instead")
    ap.add_argument("--budget-ms", type=float, default=4.0)
    ap.add_argument("--tracemalloc", action="store_true")
    args = ap.parse_args()

    import moderngl
    ctx = moderngl.create_standalone_context(require=430, backend="egl") if args.backend == "gl" else None
    import perro_pastor.gl.forward  # noqa: F401 -- imports are not what is timed
    from perro_pastor.loading import load_async
    from perro_pastor.model import load
    from perro_pastor.scheduler import Scheduler
    base = rss_mb()
    if args.tracemalloc:
        tracemalloc.start()
    phases: dict[str, list[float]] = {}
    start = time.perf_counter()
    if args.sync:
        model = load(args.model, backend=args.backend, gl_context=ctx)
    else:
        sched = Scheduler(None)
        task = load_async(args.model, scheduler=sched, backend=args.backend, gl_context=ctx)
        while not task.done:
            phase = task.phase
            sched.tick(args.budget_ms)
            phases.setdefault(phase, []).append(sched.tick_ms[-1])
            time.sleep(1 / 240)
        if task.error is not None:
            sys.exit(f"load failed: {task.error}")
        model = task.model
    load_s = time.perf_counter() - start
    out = dict(model=args.model, backend=args.backend, mode="sync" if args.sync else "async",
               budget_ms=args.budget_ms, load_s=round(load_s, 2), rss_before_mb=round(base),
               rss_steady_mb=round(rss_mb()), rss_peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               largest_tensor_mb=round(max(t.nbytes for t in model.file.tensors.values()) / 2**20, 1),
               loadavg=[round(x, 2) for x in os.getloadavg()])
    if args.tracemalloc:
        out["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    for phase, ticks in phases.items():
        t = np.array(ticks)
        out[f"ticks_{phase}"] = dict(n=len(t), max_ms=round(float(t.max()), 1), p99_ms=round(float(np.percentile(t, 99)), 1),
                                     median_ms=round(float(np.median(t)), 1), over_7ms=int((t > 7).sum()))
    if phases:
        t = np.concatenate([np.array(v) for v in phases.values()])
        out["ticks_all"] = dict(n=len(t), max_ms=round(float(t.max()), 1), p99_ms=round(float(np.percentile(t, 99)), 1),
                                median_ms=round(float(np.median(t)), 1), over_7ms=int((t > 7).sum()))
    out["fixed_work_jitter"] = jitter_baseline()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
