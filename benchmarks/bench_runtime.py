"""Runtime benchmark: N NPCs generating under a per-frame budget, and save/restore speed.

    python benchmarks/bench_runtime.py --sessions 4 --budget-ms 4 [--tokens 16] [--backend cpu] [--restore] [--frame-ms 16.7]

Prints one JSON object; the functions live in perro_pastor/runtime_bench.py, which
``perro-pastor bench --sessions`` calls too.
Ticks are called back to back (a game would render between them); the tick time is what the
frame pays. Prefill is done before measuring, so the figures are for the decode phase.
"""

from __future__ import annotations

import argparse
import json
import sys

from perro_pastor.runtime_bench import runtime_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default="default")
    p.add_argument("--backend", default="cpu", choices=("cpu", "gl", "auto"))
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--budget-ms", type=float, default=4.0)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--restore", action="store_true", help="also time restore vs re-prefill")
    p.add_argument("--frame-ms", type=float, default=0.0, help="one tick per frame of this many ms (0: back to back)")
    args = p.parse_args(argv)
    from perro_pastor.model import load
    model = load(args.model, backend=args.backend)
    result = runtime_report(model, args.sessions, args.budget_ms, args.tokens, args.restore,
                            frame_ms=args.frame_ms)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
