"""Speed of each compiled cpu kernel on the default model's own matrices, and the crossover
between the compiled mat-vec and BLAS over dequantized tiles (packed_weights.MATVEC_MAX_ROWS).

    python benchmarks/bench_cpu_kernels.py [--threads N] [--json FILE]

Kernel speed is fragile (a changed loop can fall off SIMD and run 6-12x slower), so this is the
per-kernel check to re-run after touching cpu_kernels.py. Medians of repeated calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numba
import numpy as np

from perro_pastor import packed_weights
from perro_pastor.formats import open_model_file
from perro_pastor.paths import resolve_model


def median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    mf = open_model_file(resolve_model("default"))
    rng = np.random.default_rng(0)
    rows_out = []
    for name in ("blk.0.ffn_gate.weight", "blk.0.ffn_down.weight", "token_embd.weight"):
        t = mf.tensors[name]
        cols, rows = t.shape
        m = packed_weights.pack(mf.tensor_bytes(name), t.qtype, rows, cols)
        for n_tokens in (1, 2, 4, 8, 16):
            x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
            kernel_s = median_s(lambda: m.matmul(x), args.repeats)
            saved = packed_weights.MATVEC_MAX_ROWS
            packed_weights.MATVEC_MAX_ROWS = 0  # force the BLAS path
            blas_s = median_s(lambda: m.matmul(x), args.repeats)
            packed_weights.MATVEC_MAX_ROWS = saved
            row = {"tensor": name, "type": t.qtype.name, "rows": rows, "cols": cols, "tokens": n_tokens,
                   "matvec_gweights_s": round(rows * cols * n_tokens / kernel_s / 1e9, 2),
                   "blas_gweights_s": round(rows * cols * n_tokens / blas_s / 1e9, 2),
                   "matvec_ms": round(kernel_s * 1e3, 3), "blas_ms": round(blas_s * 1e3, 3),
                   "threads": numba.get_num_threads()}
            rows_out.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            for row in rows_out:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
