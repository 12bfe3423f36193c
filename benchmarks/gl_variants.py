"""Decode and prefill of one model on the gl backend with each path switched on and off (the fused
decode kernels, matmul_lanes.comp), the host Python per token with no dispatches made, and the
GPU argmax path: `python benchmarks/gl_variants.py MODEL` (run on the device machine by
benchmarks/device/run_a.sh). One JSON row per line."""

import json
import sys
import time

import numpy as np

from perro_pastor import model as model_mod
from perro_pastor.bench import run_bench

path = sys.argv[1]
m = model_mod.load(path, backend="gl")
tr = m.transformer
mv = tr.kernels.matvecs
for fused, lanes in ((True, True), (False, False), (True, True), (True, False)):
    tr.fused_decode, mv.matmul_lanes = fused, lanes
    row = run_bench(m, 128, 64, 3)
    row.update(fused_decode=fused, matmul_lanes=lanes)
    print(json.dumps(row), flush=True)
tr.fused_decode, mv.matmul_lanes = True, True
# pure host cost: the same decode with no dispatches made (the plan recorded first)
for fused in (True, False):
    tr.fused_decode = fused
    kv = tr.new_cache(300); tr.forward(np.array([1]), 0, kv); tr.forward(np.array([1]), 0, kv)
    tr.kernels.gpu.dry_run = True
    ts = []
    for p in range(1, 200):
        t = time.perf_counter(); tr.forward(np.array([1]), p, kv); ts.append(time.perf_counter() - t)
    tr.kernels.gpu.dry_run = False
    print(json.dumps({"fused_decode": fused, "host_ms_per_token_dry_run_median": round(float(np.median(ts)) * 1000, 3)}))
tr.fused_decode = True
# greedy on the GPU (4-byte read) vs full logits read
kv = tr.new_cache(300); t0 = time.perf_counter(); tok = 1
for p in range(256):
    tok = tr.decode_greedy(np.array([tok]), p, kv)
print(json.dumps({"decode_greedy_tok_s": round(256 / (time.perf_counter() - t0), 1)}))
