"""Which code runs in the loading ticks that overrun: a stack sampler over ``load_async``.

    .venv/bin/python benchmarks/trace_loading_ticks.py [--backend gl|cpu] [--over-ms 7]

Drives ``load_async`` through a ``Scheduler`` with ``tick(4.0)`` at 240 Hz, like
``bench_loading.py``, while a sampler thread records every other thread's innermost frames every
0.5 ms (M: the frame thread, W: the loader's worker). For each tick over ``--over-ms`` it prints
the phase, the tick's length and the commonest stacks sampled inside it. The sampler runs only
when it gets the GIL, so a tick with few samples is one where C code held it (a GL call made
through moderngl, a long NumPy call): docs/loading.md reads these. Sampling costs CPU, so this
finds more long ticks than ``bench_loading.py`` does: it says where, not how many.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
import traceback


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--backend", default="gl", choices=("gl", "cpu"))
    ap.add_argument("--over-ms", type=float, default=7.0)
    args = ap.parse_args()

    import moderngl
    ctx = moderngl.create_standalone_context(require=430, backend="egl") if args.backend == "gl" else None
    import perro_pastor.gl.forward  # noqa: F401 -- imports are not what is traced
    from perro_pastor.loading import load_async
    from perro_pastor.scheduler import Scheduler

    frame_thread, samples, stop = threading.get_ident(), [], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            now = time.perf_counter()
            for tid, frame in sys._current_frames().items():
                if tid != threading.get_ident():
                    where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[-3:]]
                    samples.append((now, ("M" if tid == frame_thread else "W", *reversed(where))))
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sched = Scheduler(None)
    task = load_async(args.model, scheduler=sched, backend=args.backend, gl_context=ctx)
    ticks = []
    while not task.done:
        phase, start = task.phase, time.perf_counter()
        sched.tick(4.0)
        ticks.append((phase, start, time.perf_counter()))
        time.sleep(1 / 240)
    stop.set()
    if task.error is not None:
        sys.exit(f"load failed: {task.error}")
    long = [(phase, a, b) for phase, a, b in ticks if (b - a) * 1000 > args.over_ms]
    print(f"{len(long)} of {len(ticks)} ticks over {args.over_ms} ms ({args.backend})")
    for phase, a, b in long:
        inside = collections.Counter(stack for t, stack in samples if a <= t <= b)
        print(f"--- {phase}: {(b - a) * 1000:.1f} ms, {sum(inside.values())} samples")
        for stack, n in inside.most_common(4):
            print(f"    {n:3d} {stack[0]} " + " <- ".join(stack[1:]))


if __name__ == "__main__":
    main()
