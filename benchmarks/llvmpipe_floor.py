"""The fastest a decode step can be on this GL renderer, whatever the kernels compute.

    .venv/bin/python benchmarks/llvmpipe_floor.py [--repeat 30] [--rounds 5] [--json FILE]

A decode step of the default model (SmolLM2-135M Q4_1, tied Q8_0 classifier) must at least
(a) read every weight byte once: 96.5 MB in the dispatches the launcher makes (one per layer
    mat-vec, 14 slices of the classifier), and
(b) pay each of its ~376 dispatches' fixed cost (moderngl's call + the driver's launch).
This script times exactly that, with kernels that do nothing else: "read" kernels XOR the weight
bytes together (no decoding, no multiply) in three access patterns (8 rows per invocation in work
groups of 16, the mat-vec's shape; one row per invocation in groups of 64; and lane-contiguous,
neighbouring invocations reading neighbouring 16-byte words), the fastest counted per shape, and
an "empty" kernel that writes one word for the other dispatches. The sum is a floor for any GLSL
decode on this renderer, and so a ceiling on tok/s; Python's own per-dispatch work (the
launchers, the scheduler) comes on top.

Each figure is the median over --rounds rounds (all kernels interleaved within a round, so a
noisy machine hits them alike) of the median of --repeat dispatches.
"""

from __future__ import annotations

import argparse
import json
import time

import moderngl
import numpy as np

# The default model's decode step, as the gl launcher dispatches it: (rows, cols, bytes per weight, count)
Q4_1, Q8_0 = 20 / 32, 34 / 32
N_LAYERS = 30
MATVECS = [(576, 576, Q4_1, 2 * N_LAYERS), (192, 576, Q4_1, 2 * N_LAYERS),  # wq + wo, wk + wv
           (1536, 576, Q4_1, 2 * N_LAYERS), (576, 1536, Q4_1, N_LAYERS),  # w1 + w3, w2
           (49152 // 14, 576, Q8_0, 14)]  # the classifier in 14 slices
OTHER_DISPATCHES = 5 * N_LAYERS + 2  # rmsnorm x2, rope, attention, swiglu per layer; embedding, final norm

HEADER = """#version 430
#ifndef WG
#define WG 64
#endif
#ifndef NR
#define NR 8
#endif
layout(local_size_x = WG) in;
layout(std430, binding = 0) readonly buffer W { uvec4 w[]; };
layout(std430, binding = 1) writeonly buffer Out { uint out_[]; };
uniform uint n_quads;       // uvec4s in the buffer
uniform uint quads_per_row;
"""

# each invocation XORs NR whole rows, walking along them (the mat-vec's pattern)
READ_ROWS = HEADER + """
void main() {
    uint r0 = gl_GlobalInvocationID.x * NR;
    uvec4 acc = uvec4(0u);
    for (uint r = 0u; r < NR; r++) {
        uint base = min((r0 + r) * quads_per_row, n_quads - quads_per_row);
        for (uint q = 0u; q < quads_per_row; q++) acc ^= w[base + q];
    }
    out_[gl_GlobalInvocationID.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
"""

# neighbouring invocations read neighbouring uvec4s; each walks the buffer with a stride of all of them
READ_CONTIGUOUS = HEADER + """
void main() {
    uint stride = gl_NumWorkGroups.x * WG;
    uvec4 acc = uvec4(0u);
    for (uint q = gl_GlobalInvocationID.x; q < n_quads; q += stride) acc ^= w[q];
    out_[gl_GlobalInvocationID.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
"""

EMPTY = HEADER + """
void main() { if (gl_GlobalInvocationID.x == 0u) out_[0] = n_quads; }
"""


def timed(run, repeat: int) -> float:
    """Median wall ms of one dispatch (llvmpipe runs it inside glDispatchCompute; finish() to be sure)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    ctx = moderngl.create_standalone_context(require=430, backend="egl")
    rng = np.random.default_rng()
    out = ctx.buffer(reserve=4 << 20)
    # name: (program, rows per work group, or 0 for a fixed 16 work groups)
    programs = {f"rows{nr}_wg{wg}": (ctx.compute_shader(READ_ROWS.replace("#version 430", f"#version 430\n#define WG {wg}\n#define NR {nr}")), nr * wg)
                for nr, wg in ((8, 16), (1, 64))}  # the mat-vec's shape, and one row per invocation
    programs["contiguous"] = (ctx.compute_shader(READ_CONTIGUOUS), 0)
    empty = ctx.compute_shader(EMPTY)
    buffers = []
    for rows, cols, bpw, count in MATVECS:
        quads_per_row = int(np.ceil(cols * bpw / 16))
        data = rng.integers(0, 2**32, size=rows * quads_per_row * 4, dtype=np.uint32)  # fresh random bytes
        buffers.append((ctx.buffer(data.tobytes()), rows, quads_per_row, count))
    out.bind_to_storage_buffer(1)

    def dispatch(prog, buf, rows, quads_per_row, rows_per_group):
        def run():
            buf.bind_to_storage_buffer(0)
            for name, value in (("n_quads", rows * quads_per_row), ("quads_per_row", quads_per_row)):
                if name in prog:  # a kernel that does not use a uniform has none
                    prog[name].value = value
            groups = -(-rows // rows_per_group) if rows_per_group else 16
            prog.run(groups)
            ctx.finish()
        return run

    for prog, per_group in programs.values():  # first dispatch = llvmpipe's JIT; not timed
        dispatch(prog, *buffers[0][:3], per_group)()
    dispatch(empty, *buffers[0][:3], 1 << 30)()

    rounds: list[dict] = []
    for _ in range(args.rounds):
        r = {"empty_ms": timed(dispatch(empty, *buffers[0][:3], 1 << 30), args.repeat)}
        for pattern, (prog, per_group) in programs.items():
            r[pattern] = [timed(dispatch(prog, buf, rows, qpr, per_group), args.repeat)
                          for buf, rows, qpr, _ in buffers]
        rounds.append(r)

    empty_ms = float(np.median([r["empty_ms"] for r in rounds]))
    shapes = []
    best_read_ms = 0.0
    for i, (rows, cols, bpw, count) in enumerate(MATVECS):
        per = {p: float(np.median([r[p][i] for r in rounds])) for p in programs}
        mb = rows * cols * bpw / 1e6
        shapes.append(dict(rows=rows, cols=cols, dispatches_per_token=count, mb=round(mb, 3),
                           **{f"{p}_ms": round(v, 3) for p, v in per.items()},
                           **{f"{p}_gb_s": round(mb / v, 2) for p, v in per.items()}))
        best_read_ms += count * min(per.values())
    n_dispatches = sum(c for *_, c in MATVECS) + OTHER_DISPATCHES
    floor_ms = best_read_ms + OTHER_DISPATCHES * empty_ms
    mb_per_token = sum(r * c * b * n for r, c, b, n in MATVECS) / 1e6
    result = dict(renderer=ctx.info["GL_RENDERER"], empty_dispatch_ms=round(empty_ms, 4),
                  dispatches_per_token=n_dispatches, weight_mb_per_token=round(mb_per_token, 1),
                  read_ms_per_token=round(best_read_ms, 2), floor_ms_per_token=round(floor_ms, 2),
                  ceiling_tok_s=round(1000 / floor_ms, 1), shapes=shapes,
                  repeat=args.repeat, rounds=args.rounds)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
