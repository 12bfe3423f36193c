"""NPCs on the gl backend with decode passes run ahead of the CPU (gl/run_ahead.py) and without,
alternately: in a 60 Hz frame loop (one 4 ms tick a frame, the rest slept, as a game would) and
with ticks back to back.

    python benchmarks/run_ahead_ab.py MODEL [--rounds 2]

One JSON row per run (runtime_bench's keys plus ``run_ahead``). Run on a GPU (the device
machine: benchmarks/device/frames_a.sh); on llvmpipe passes finish inside their calls and there
is nothing to overlap.
"""

from __future__ import annotations

import argparse
import json

from perro_pastor.model import load
from perro_pastor.runtime_bench import runtime_report

FRAME_MS = 1000.0 / 60.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128)
    args = p.parse_args()
    model = load(args.model, backend="gl")
    for _ in range(args.rounds):
        for frame_ms in (FRAME_MS, 0.0):
            for on in (False, True):
                model.transformer.run_ahead = on
                row = runtime_report(model, 1, 4.0, args.tokens, frame_ms=frame_ms)
                print(json.dumps(dict(row, run_ahead=on)), flush=True)
    model.close()


if __name__ == "__main__":
    main()
