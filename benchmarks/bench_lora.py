"""Decode speed with and without run-time LoRA adapters (issue 5's "LoRA overhead" figure).

    .venv/bin/python benchmarks/bench_lora.py [--model default] [--backend cpu] [--rank 16]
                                              [--n-gen 16] [--repeats 7] [--batch 4]

Adapters are random rank-R factors on all 7 projections (wq wk wv wo w1 w2 w3) of every layer,
built in memory (reading a file is not what is timed). Each row is the median decode tok/s over
``repeats`` runs; runs with and without adapters alternate so that drift in machine load hits
both alike. ``vs_base`` is the ratio of the medians; ``vs_base_paired`` the median of each
repeat's ratio to the base run just before it (steadier on a machine whose speed drifts).
``--batch N`` adds rows for N sequences decoding in one batch, each with its own adapter,
against the same N sequences without adapters (tok/s counts tokens of all sequences).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import perro_pastor
from perro_pastor.backend import Segment, run_to_end
from perro_pastor.lora import PROJECTIONS, LoraAdapter
from perro_pastor.weights import LAYER_TENSORS


def random_adapter(cfg, rank: int, seed: int) -> LoraAdapter:
    rng = np.random.default_rng(seed)
    targets = {}
    for l in range(cfg.n_layers):
        for p in PROJECTIONS:
            cols, rows = LAYER_TENSORS[p][1](cfg)
            targets[(l, p)] = (rng.normal(0, 0.02, (rank, cols)).astype(np.float32),
                               rng.normal(0, 0.02, (rows, rank)).astype(np.float32))
    return LoraAdapter(f"random-r{rank}-{seed}", rank, float(rank), 1.0, 1.0, targets)


def decode_tok_s(transformer, prompts: list[np.ndarray], adapters: list[tuple], n_gen: int) -> float:
    """Prefill each prompt (untimed), then time n_gen greedy decode steps of all sequences as one batch."""
    n_ctx = max(len(p) for p in prompts) + n_gen + 1
    caches = [transformer.new_cache(n_ctx) for _ in prompts]
    logits = run_to_end(transformer.forward_steps(
        [Segment(p, 0, kv, ad) for p, kv, ad in zip(prompts, caches, adapters)]))
    pos = [len(p) for p in prompts]
    start = time.perf_counter()
    for _ in range(n_gen):
        segs = [Segment(np.array([int(np.argmax(lg))]), p, kv, ad)
                for lg, p, kv, ad in zip(logits, pos, caches, adapters)]
        logits = run_to_end(transformer.forward_steps(segs))
        pos = [p + 1 for p in pos]
    return n_gen * len(prompts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--n-prompt", type=int, default=16)
    ap.add_argument("--n-gen", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=4, help="also time N sequences in one batch (0: skip)")
    args = ap.parse_args(argv)

    model = perro_pastor.load(args.model, backend=args.backend)
    cfg, tr = model.config, model.transformer
    adapters = [random_adapter(cfg, args.rank, seed) for seed in range(max(1, args.batch))]
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, args.n_prompt) for _ in range(max(1, args.batch))]
    decode_tok_s(tr, prompts[:1], [()], 2)  # warm-up: weight caches, shader compiles

    configs = {"base x1": (prompts[:1], [()]), "lora x1": (prompts[:1], [(adapters[0],)])}
    if args.batch > 1:
        configs[f"base x{args.batch}"] = (prompts, [()] * args.batch)
        configs[f"lora x{args.batch} (one adapter each)"] = (prompts, [(a,) for a in adapters])
    runs: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, (ps, ads) in configs.items():
            runs[name].append(decode_tok_s(tr, ps, ads, args.n_gen))
    medians = {name: statistics.median(v) for name, v in runs.items()}
    for name, tok_s in medians.items():
        base = name.replace("lora", "base").split(" (")[0]
        # each repeat's run against the base run right before it: drift in machine speed cancels
        paired = statistics.median(a / b for a, b in zip(runs[name], runs[base]))
        print(json.dumps({"backend": model.backend, "model": model.file.path.name, "rank": args.rank,
                          "run": name, "n_gen": args.n_gen, "repeats": args.repeats,
                          "decode_tok_s": round(tok_s, 2), "vs_base": round(tok_s / medians[base], 3),
                          "vs_base_paired": round(paired, 3)}))
    model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
