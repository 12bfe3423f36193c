"""Soak: NPCs ticked every 16 ms with a 4 ms budget for minutes, with asks, cancels,
save/restore, forks, removes and dropped schedulers, sampling RSS and (gl) live GL objects (issue 20's figure).

    .venv/bin/python benchmarks/soak.py --backend cpu --minutes 10 [--npcs 8] [--json out.json]

A run passes when RSS and live GL objects stay flat after the first minute (the drift is the
last sample minus the one at one minute) and no reply ends in error. Tick p99/max are recorded
too, but on a shared 2-core VM they say more about the VM than about the scheduler.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import time

import perro_pastor
from perro_pastor.sampling import SamplerSettings
from perro_pastor.scheduler import Scheduler

QUESTIONS = ["Any news?", "What do you sell?", "Where is the mill?", "Tell me a joke.",
             "Is the bridge safe?", "Who lives up the hill?", "Seen my sheep?", "Good morning!"]


class TrackedContext:
    """A moderngl context that remembers every buffer and program made on it."""

    def __init__(self, ctx):
        self._ctx, self.made = ctx, []

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def buffer(self, *args, **kwargs):
        obj = self._ctx.buffer(*args, **kwargs)
        self.made.append(obj)
        return obj

    def compute_shader(self, *args, **kwargs):
        obj = self._ctx.compute_shader(*args, **kwargs)
        self.made.append(obj)
        return obj

    def live(self) -> int:
        self.made = [o for o in self.made if type(o.mglo).__name__ != "InvalidObject"]
        return len(self.made)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def soak(backend: str, minutes: float, n_npcs: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    ctx = None
    if backend == "gl":
        import moderngl
        ctx = TrackedContext(moderngl.create_standalone_context(require=430, backend="egl"))
    model = perro_pastor.load("default", backend=backend, gl_context=ctx)
    sched = Scheduler(model)
    settings = SamplerSettings(temperature=0.8, top_k=40)

    def new_npc(i: int):
        return sched.session(system_prompt=f"You are villager number {i}.", sampler=settings,
                             seed=i, n_ctx=256, name=f"npc{i}")

    npcs = [new_npc(i) for i in range(n_npcs)]
    replies, errors, forks = {}, [], []
    events = {"asks": 0, "cancels": 0, "restores": 0, "forks": 0, "dropped": 0}
    samples, start = [], time.perf_counter()
    next_sample, frame = start + 60.0, 0
    samples.append({"t_s": 0.0, "rss_mb": round(rss_mb(), 1), "gl_objects": ctx.live() if ctx else None})
    while time.perf_counter() - start < minutes * 60:
        frame_start = time.perf_counter()
        sched.tick(4.0)
        for npc in list(npcs):
            reply = replies.get(npc.name)
            if reply is not None and reply.done:
                if reply.finish_reason == "error":
                    errors.append(f"{npc.name}: {reply.error}")
                replies.pop(npc.name)
            if npc.name not in replies and rng.random() < 0.05:
                replies[npc.name] = npc.ask(rng.choice(QUESTIONS), max_tokens=16)
                events["asks"] += 1
            elif npc.busy and rng.random() < 0.0005:
                npc.cancel()
                events["cancels"] += 1
        if frame % 300 == 150:  # every ~5 s: save an idle NPC and bring it back from its bytes
            idle = [n for n in npcs if not n.busy]
            if idle:
                old = rng.choice(idle)
                restored = sched.restore(old.save("q8"))
                sched.remove(old)
                npcs[npcs.index(old)] = restored
                events["restores"] += 1
        if frame % 420 == 210:  # every ~7 s: fork an idle NPC and let it answer (removed below)
            idle = [n for n in npcs if not n.busy]
            if idle:
                twin = rng.choice(idle).fork(seed=frame)
                forks.append((twin, twin.ask("And then?", max_tokens=8)))
                events["forks"] += 1
        if frame % 600 == 300:  # every ~10 s: a scheduler with an NPC, dropped without close
            Scheduler(model).session(system_prompt="You are a passer-by.", n_ctx=256)
            events["dropped"] += 1  # garbage collection must free its KV cache (GL buffers)
        for twin, reply in [f for f in forks if f[1].done]:
            if reply.finish_reason == "error":
                errors.append(f"fork of {twin.name}: {reply.error}")
            sched.remove(twin)
            forks.remove((twin, reply))
        frame += 1
        now = time.perf_counter()
        if now >= next_sample:
            samples.append({"t_s": round(now - start, 1), "rss_mb": round(rss_mb(), 1),
                            "gl_objects": ctx.live() if ctx else None})
            next_sample += 60.0
        time.sleep(max(0.0, 0.016 - (time.perf_counter() - frame_start)))
    samples.append({"t_s": round(time.perf_counter() - start, 1), "rss_mb": round(rss_mb(), 1),
                    "gl_objects": ctx.live() if ctx else None})
    ticks = sorted(sched.tick_ms)
    base = samples[1] if len(samples) > 2 else samples[0]
    return {
        "backend": model.backend, "minutes": minutes, "npcs": n_npcs, "frames": frame, **events,
        "tokens": sched.tokens_generated, "errors": errors[:10], "n_errors": len(errors),
        "tick_ms_p50": round(statistics.median(ticks), 2), "tick_ms_p99": round(ticks[int(len(ticks) * 0.99)], 2),
        "tick_ms_max": round(ticks[-1], 2),
        "rss_drift_mb_after_1_min": round(samples[-1]["rss_mb"] - base["rss_mb"], 1),
        "gl_objects_drift_after_1_min": (samples[-1]["gl_objects"] - base["gl_objects"]) if ctx else None,
        "samples": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=("cpu", "gl"), default="cpu")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--npcs", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    row = soak(args.backend, args.minutes, args.npcs)
    print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
