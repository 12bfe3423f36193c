"""Where a cpu decode step's time goes at a given context: `python benchmarks/cpu_decode_parts.py P`
decodes 48 greedy tokens of the default model after a random prompt of P tokens and prints tok/s
and the milliseconds per token of the attention halves, the feed-forward halves, the classifier
and the Python around them ("rest"), timed by wrapping those calls from outside the engine."""
import sys
import time

import numpy as np

from perro_pastor import cpu_kernels, packed_weights
from perro_pastor import model as model_mod

m = model_mod.load("default", backend="cpu")
tr = m.transformer
acc = {}
def wrap(mod, name, key):
    inner = getattr(mod, name)
    def f(*a, **k):
        t = time.perf_counter(); r = inner(*a, **k); acc[key] = acc.get(key, 0) + time.perf_counter() - t; return r
    setattr(mod, name, f)
wrap(cpu_kernels, "decode_attention", "att_half")
wrap(cpu_kernels, "decode_ffn", "ffn_half")
wrap(packed_weights.PackedMatrix, "matmul", "classifier")
P = int(sys.argv[1]); N = 48
kv = tr.new_cache(P + N + 2)
tr.forward(np.random.default_rng(0).integers(0, 49152, P), 0, kv)
tok, pos = 1, P
acc.clear(); t0 = time.perf_counter()
for i in range(N):
    tok = int(np.argmax(tr.forward(np.array([tok]), pos, kv))); pos += 1
wall = time.perf_counter() - t0
print(f"P={P}: {N / wall:.1f} tok/s " + " ".join(f"{k} {v / N * 1000:.2f}" for k, v in acc.items()) + f" rest {(wall - sum(acc.values())) / N * 1000:.2f} ms")
