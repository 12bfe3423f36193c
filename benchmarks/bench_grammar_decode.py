"""Decode speed with a grammar vs without, on the cpu backend (issue 22: >= 0.8x).

    .venv/bin/python benchmarks/bench_grammar_decode.py [--rounds 5] [--json out.json]

Each round runs ``Model.generate`` twice on the default model, alternating: the NPC-action schema
(benchmarks/bench_grammar.py's) and no grammar, same prompt, seed and sampler. The grammar run
stops where its JSON document ends (EOS), so tok/s compares like with like. The first grammar run
(every automaton state new, masks computed) is reported apart from later ones ("warm": a game
keeps one Grammar per schema). Ratio: median of the rounds' warm ratios.
"""

import argparse
import json
import statistics

import perro_pastor
from perro_pastor.grammar import Grammar
from perro_pastor.model import GenerationStats

from bench_grammar import NPC_SCHEMA

PROMPT = ("<|im_start|>system\nYou are Ana, a merchant. Answer as JSON with say, action, mood."
          "<|im_end|>\n<|im_start|>user\nCan you open the cellar door?<|im_end|>\n<|im_start|>assistant\n")


def run(model, grammar, seed: int, n: int) -> GenerationStats:
    stats = GenerationStats()
    sampler = perro_pastor.Sampler(perro_pastor.SamplerSettings(temperature=0.7), seed=seed)
    for _ in model.generate(PROMPT, max_tokens=n, sampler=sampler, stats=stats, grammar=grammar):
        pass
    return stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args()
    model = perro_pastor.load("default", backend="cpu")
    grammar = Grammar.from_json_schema(NPC_SCHEMA)
    run(model, None, 0, 8)  # warm-up: kernels, caches
    first = run(model, grammar, 0, args.n)
    rows = []
    for r in range(args.rounds):
        free = run(model, None, r + 1, args.n)
        constrained = run(model, grammar, r + 1, args.n)
        rows.append({"free_tok_s": round(free.decode_tok_s, 2), "grammar_tok_s": round(constrained.decode_tok_s, 2),
                     "grammar_tokens": constrained.generated_tokens,
                     "ratio": round(constrained.decode_tok_s / free.decode_tok_s, 3)})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"first_grammar_reply_tok_s": round(first.decode_tok_s, 2),
               "median_ratio_warm": statistics.median(r["ratio"] for r in rows), "rounds": rows}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
