"""Mat-vec throughput per GGML type on the gl backend, in G weights/s, plus the longest dispatch.

    .venv/bin/python benchmarks/bench_kernels.py [--types Q4_1,Q8_0] [--nr 4] [--repeat 20] [--layout raw,repacked]
    .venv/bin/python benchmarks/bench_kernels.py --tokens 128 --path matvec,matmul   # batched prefill

Each figure is the median of --rounds rounds of --repeat calls; with --layout raw,repacked the
two layouts of Q4_0/Q4_1/Q8_0 run back to back in every round, so a loaded machine hits both alike;
likewise --path matvec,matmul runs a batch of --tokens through matvec.comp (one decode of a weight
block per token) and matmul.comp (one per tile of tokens) back to back. Rates count weight-token
multiply-adds (rows x cols x tokens).

Shapes are the default model's (SmolLM2-135M: 576 -> 1536 FFN, 1536 -> 576, 576 -> 576) and its
49152-row output layer, which the launcher splits into dispatches of max_weights_per_dispatch.
Random weights: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gl_helpers import ALL_TYPES, random_weight  # noqa: E402

from perro_pastor.gl.buffers import REPACKABLE, f32_buffer, upload_weight  # noqa: E402
from perro_pastor.gl.context import GLContext  # noqa: E402
from perro_pastor.gl.kernels import Kernels  # noqa: E402
from perro_pastor.gl_figures import DispatchTimer  # noqa: E402
from perro_pastor.quant import GGMLType  # noqa: E402

SHAPES = [(1536, 576), (576, 1536), (576, 576)]  # K-quants use cols 1536 -> 1536 rows (256-blocks)
OUTPUT = (49152, 576)


def bench(k: Kernels, glctx: GLContext, qtype: GGMLType, rows: int, cols: int, repeat: int, n_tokens: int = 1,
          repack: bool = True):
    rng = np.random.default_rng(0)
    w = upload_weight(glctx, random_weight(qtype, rows, cols, rng), qtype, rows, cols, repack=repack)
    x = f32_buffer(glctx, rng.standard_normal((n_tokens, cols)).astype(np.float32))
    dst = f32_buffer(glctx, rows * n_tokens)
    k.matvec(dst, w, x, n_tokens=n_tokens)  # JIT on first run
    glctx.ctx.finish()
    timer = DispatchTimer(k)  # counts the dispatches (two perf_counter calls each)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        k.matvec(dst, w, x, n_tokens=n_tokens)
    glctx.ctx.finish()
    dt = (time.perf_counter() - t0) / repeat
    cpu = (time.process_time() - c0) / repeat
    per_dispatch = dt / (timer.dispatches / repeat)
    timer.detach()
    w.release()
    return rows * cols * n_tokens / dt / 1e9, dt, per_dispatch, rows * cols * n_tokens / cpu / 1e9


def median_bench(rounds: int, *args, **kw):
    """Per-figure median over rounds (rate, dt, per-dispatch, cpu rate)."""
    runs = [bench(*args, **kw) for _ in range(rounds)]
    return tuple(float(np.median([r[i] for r in runs])) for i in range(4))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default=",".join(t.name for t in ALL_TYPES))
    ap.add_argument("--nr", type=int, default=8, help="rows per invocation")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1, help="n_tokens (prefill batch)")
    ap.add_argument("--layout", default="repacked", help="raw, repacked or raw,repacked (Q4_0/Q4_1/Q8_0)")
    ap.add_argument("--x", default="ubo", help="how decode reads x: ubo, ssbo or ssbo,ubo")
    ap.add_argument("--path", default="matmul", help="with --tokens > 1: matvec, matmul or matvec,matmul")
    args = ap.parse_args()
    glctx = GLContext()
    paths = args.path.split(",") if args.tokens > 1 else ["matvec"]
    kernels = {f"{xm} {p}" if len(paths) > 1 else xm:
               Kernels(glctx, matvec_rows_per_invocation=args.nr, matvec_x_ubo=xm == "ubo",
                       matmul_min_tokens=2 if p == "matmul" else 1 << 30)
               for xm in args.x.split(",") for p in paths}
    print(f"# {glctx.limits.renderer}, NR={args.nr}, n_tokens={args.tokens}, load average {os.getloadavg()[0]:.1f}")
    # wall: G weights/s of wall time; cpu: G weights per CPU-second of this process (llvmpipe's
    # threads included), which stays meaningful when other jobs load the machine.
    print(f"{'type layout x path':27} " + " ".join(f"{r}x{c:>5}" for r, c in SHAPES)
          + "   output 49152x576: wall (ms total, ms per dispatch)  | cpu G/cpu-s")
    for name in args.types.split(","):
        qtype = GGMLType[name]
        shapes = [(r, c if c % 256 == 0 or not name.endswith("_K") else 1536) for r, c in SHAPES + [OUTPUT]]
        layouts = args.layout.split(",") if qtype in REPACKABLE else ["raw"]
        for layout, xm in [(lay, xm) for lay in layouts for xm in kernels]:
            rp, k = layout == "repacked", kernels[xm]
            res = [median_bench(args.rounds, k, glctx, qtype, r, c, args.repeat, args.tokens, rp) for r, c in shapes[:-1]]
            rate, dt, per, cpu = median_bench(args.rounds, k, glctx, qtype, *shapes[-1], max(2, args.repeat // 5),
                                              args.tokens, rp)
            print(f"{name + ' ' + layout + ' ' + xm:27} " + " ".join(f"{v[0]:9.2f}" for v in res)
                  + f"   {rate:9.2f} ({dt * 1e3:.1f} ms, {per * 1e3:.2f})"
                  + "  | " + " ".join(f"{v[3]:.2f}" for v in res) + f" {cpu:.2f}")
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
