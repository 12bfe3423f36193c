#!/usr/bin/env bash
# Our cpu backend and llama.cpp's CPU backend (2 threads) on the same file, alternately, so both
# see the same machine state. One JSON line per run into OUT (default docs/figures/cpu_vs_llama_cpp.jsonl).
#
#   bash benchmarks/cpu_vs_llama_cpp.sh LLAMA_CPP_BIN_DIR [MODEL] [ROUNDS] [OUT]
#
# LLAMA_CPP_BIN_DIR holds llama-bench (built from the llama.cpp vendored by llama-cpp-python
# 0.3.36; see benchmarks/ppl_quant_types.sh). MODEL defaults to the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:?give the folder with llama-bench}
MODEL=${2:-$(.venv/bin/python -c "from perro_pastor.paths import resolve_model; print(resolve_model('default'))")}
ROUNDS=${3:-3}
OUT=${4:-docs/figures/cpu_vs_llama_cpp.jsonl}
: > "$OUT"
for round in $(seq "$ROUNDS"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    ours=$(.venv/bin/perro-pastor bench -m "$MODEL" --backend cpu -p 128 -n 64 --json 2>/dev/null)
    theirs=$("$BIN_DIR/llama-bench" -m "$MODEL" -t 2 -p 128 -n 64 -r 3 -o jsonl 2>/dev/null \
             | .venv/bin/python -c "
import json, sys
rows = [json.loads(line) for line in sys.stdin]
print(json.dumps({('prefill_tok_s' if r['n_prompt'] else 'decode_tok_s'): round(r['avg_ts'], 2) for r in rows}))")
    .venv/bin/python -c "
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({'round': int(sys.argv[3]), 'model': ours['model'], 'load': float(sys.argv[4]),
                  'ours_prefill': ours['prefill_tok_s'], 'llama_cpp_prefill': theirs['prefill_tok_s'],
                  'ours_decode': ours['decode_tok_s'], 'llama_cpp_decode': theirs['decode_tok_s'],
                  'prefill_ratio': round(ours['prefill_tok_s'] / theirs['prefill_tok_s'], 3),
                  'decode_ratio': round(ours['decode_tok_s'] / theirs['decode_tok_s'], 3)}))" \
        "$ours" "$theirs" "$round" "$load" | tee -a "$OUT"
done
