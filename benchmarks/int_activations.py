"""Decode of the cpu backend with float activations and with 9-bit activations for its 4-bit
matrices (``CpuTransformer.int_activations``), alternately in one process, and llama.cpp's decode
(llama-bench, 2 threads) in the same minutes when its folder is given.

    python benchmarks/int_activations.py [MODEL] [--llama-bin DIR] [--rounds 3]

One JSON row per round (tok/s and the ratios to llama.cpp).
"""

from __future__ import annotations

import argparse
import json
import subprocess

from perro_pastor.bench import run_bench
from perro_pastor.model import load
from perro_pastor.paths import resolve_model


def llama_cpp_decode(bin_dir: str, path: str) -> float:
    out = subprocess.run([f"{bin_dir}/llama-bench", "-m", path, "-t", "2", "-p", "0", "-n", "64", "-r", "3",
                          "-o", "jsonl"], capture_output=True, text=True, check=True).stdout
    return round([json.loads(line) for line in out.splitlines() if line.startswith("{")][-1]["avg_ts"], 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--llama-bin", help="folder with llama-bench (benchmarks/ppl_quant_types.sh builds it)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    model = load(args.model, backend="cpu")
    for round_ in range(args.rounds):
        row = {"round": round_}
        for on in (False, True):
            model.transformer.int_activations = on
            row["rounded" if on else "float"] = run_bench(model, 128, 64, 3)["decode_tok_s"]
        if args.llama_bin:
            row["llama_cpp"] = llama_cpp_decode(args.llama_bin, str(resolve_model(args.model)))
            row["ratio_float"] = round(row["float"] / row["llama_cpp"], 3)
            row["ratio_rounded"] = round(row["rounded"] / row["llama_cpp"], 3)
        print(json.dumps(row), flush=True)
    model.close()


if __name__ == "__main__":
    main()
