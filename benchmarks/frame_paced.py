"""NPCs generating inside a game's frame loop: one ``tick(budget_ms)`` per 60 Hz frame, the rest
of the frame slept (the game drawing), with and without the scheduler's wait on GPU fences.

    python benchmarks/frame_paced.py MODEL [--backend gl] [--sessions 1 4] [--tokens 128]

For each session count it prints two JSON rows (runtime_bench's keys): ``"fence_wait": true`` is
the scheduler as it is, which waits for a pass's fence when it should signal within the budget;
``false`` ends the tick at any pending fence, as the scheduler did before (emulated by an
infinite expected wait), so an asynchronous GPU serves about one token a frame. On synchronous
drivers (cpu, llvmpipe) there are no fences and the two rows measure the same thing.
"""

from __future__ import annotations

import argparse
import json

from perro_pastor import scheduler
from perro_pastor.model import load
from perro_pastor.runtime_bench import runtime_report

FRAME_MS = 1000.0 / 60.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--backend", default="gl")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--budget-ms", type=float, default=4.0)
    args = p.parse_args()
    model = load(args.model, backend=args.backend)
    plain_init = scheduler.Scheduler.__init__

    def never_waits(self, *a, **k):
        plain_init(self, *a, **k)
        self.step_cost[scheduler.GPU_WAIT] = float("inf")

    for sessions in args.sessions:
        for fence_wait in (False, True):
            scheduler.Scheduler.__init__ = plain_init if fence_wait else never_waits
            row = runtime_report(model, sessions, args.budget_ms, args.tokens, frame_ms=FRAME_MS)
            print(json.dumps(dict(row, fence_wait=fence_wait)), flush=True)
    scheduler.Scheduler.__init__ = plain_init


if __name__ == "__main__":
    main()
