#!/usr/bin/env bash
# Our cpu backend and llama.cpp's CPU backend (2 threads) on the same file, alternately, so both
# see the same machine state. One JSON line per run into OUT (default docs/figures/cpu_vs_llama_cpp.jsonl).
#
#   bash benchmarks/cpu_vs_llama_cpp.sh LLAMA_CPP_BIN_DIR [MODEL] [ROUNDS] [OUT]
#
# LLAMA_CPP_BIN_DIR holds llama-bench (built from the llama.cpp vendored by llama-cpp-python
# 0.3.36; see benchmarks/ppl_quant_types.sh). MODEL defaults to the embedded default model.
# LLAMA_BENCH_ARGS adds arguments to each llama-bench call (e.g. "--repack 0"). llama-bench runs
# decode and prefill (-p 128 -n 0) separately: where one of them crashes (its AMX prompt kernels
# die with SIGILL on a VM that does not enable AMX), the others are still recorded and the crashed
# one is null. Decode is measured as ours is, after 128 tokens of context (-d 128 -n 64; -ub 1
# fills that context one token a batch, through the decode kernels, so the AMX build does not
# crash; it leaves the decode figure as it is: 125-126 vs 120 tok/s with --repack 0), and also
# on an empty context (-p 0 -n 64, llama-bench's usual tg figure: `decode_ratio_depth0`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:?give the folder with llama-bench}
MODEL=${2:-$(.venv/bin/python -c "from perro_pastor.paths import resolve_model; print(resolve_model('default'))")}
ROUNDS=${3:-3}
OUT=${4:-docs/figures/cpu_vs_llama_cpp.jsonl}
EXTRA=${LLAMA_BENCH_ARGS:-}
: > "$OUT"
llama_tok_s() {  # llama-bench's mean tok/s for "-p P -n N [more args]", or null if it failed
    local rows
    rows=$("$BIN_DIR/llama-bench" -m "$MODEL" -t 2 -p "$1" -n "$2" "${@:3}" -r 3 -o jsonl $EXTRA 2>/dev/null || true)
    echo "$rows" | .venv/bin/python -c "
import json, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
print(round(rows[0]['avg_ts'], 2) if rows else 'null')"
}
for round in $(seq "$ROUNDS"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    ours=$(.venv/bin/perro-pastor bench -m "$MODEL" --backend cpu -p 128 -n 64 --json 2>/dev/null)
    their_decode=$(llama_tok_s 0 64 -d 128 -ub 1)
    their_decode_depth0=$(llama_tok_s 0 64)
    their_prefill=$(llama_tok_s 128 0)
    .venv/bin/python -c "
import json, sys
ours = json.loads(sys.argv[1])
decode, prefill, decode0 = json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[7])
ratio = lambda a, b: round(a / b, 3) if b else None
print(json.dumps({'round': int(sys.argv[4]), 'model': ours['model'], 'load': float(sys.argv[5]),
                  'llama_bench_args': sys.argv[6],
                  'ours_prefill': ours['prefill_tok_s'], 'llama_cpp_prefill': prefill,
                  'ours_decode': ours['decode_tok_s'], 'llama_cpp_decode': decode,
                  'prefill_ratio': ratio(ours['prefill_tok_s'], prefill),
                  'decode_ratio': ratio(ours['decode_tok_s'], decode),
                  'llama_cpp_decode_depth0': decode0, 'decode_ratio_depth0': ratio(ours['decode_tok_s'], decode0)}))" \
        "$ours" "$their_decode" "$their_prefill" "$round" "$load" "$EXTRA" "$their_decode_depth0" | tee -a "$OUT"
done
