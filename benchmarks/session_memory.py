"""Memory per NPC session and the cost of trimming a long history (issue 20's figures).

    .venv/bin/python benchmarks/session_memory.py --backend cpu|gl [--n-ctx 512] [--sessions 20]

Prints, for the default model: the time of one ``ask`` after 400 ``say`` lines (the history is
trimmed to fit ``n_ctx``), then the resident memory (RSS) each idle session adds and what it adds
after one short reply. On gl a session's KV cache is GPU memory; on llvmpipe that is RSS too.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time

import perro_pastor
from perro_pastor.sampling import GREEDY
from perro_pastor.scheduler import Scheduler


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=("cpu", "gl"), default="cpu")
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--sessions", type=int, default=20)
    args = ap.parse_args()
    model = perro_pastor.load("default", backend=args.backend)
    sched = Scheduler(model)

    talker = sched.session(system_prompt="You are Bob.", sampler=GREEDY, n_ctx=args.n_ctx)
    for i in range(400):
        talker.say(f"line {i} about the sheep and the bridge")
    start = time.perf_counter()
    reply = talker.ask("hi", max_tokens=1)
    ask_s = time.perf_counter() - start
    reply.result()

    gc.collect()
    base = rss_mb()
    npcs = [sched.session(system_prompt="You are Bob.", sampler=GREEDY, n_ctx=args.n_ctx)
            for _ in range(args.sessions)]
    gc.collect()
    idle = (rss_mb() - base) / args.sessions
    for npc in npcs:
        npc.ask("Hello", max_tokens=4).result()
    gc.collect()
    after_reply = (rss_mb() - base) / args.sessions
    print(json.dumps({"backend": model.backend, "n_ctx": args.n_ctx, "ask_after_400_lines_s": round(ask_s, 3),
                      "idle_session_mb": round(idle, 2), "session_after_short_reply_mb": round(after_reply, 2)}))


if __name__ == "__main__":
    main()
