#!/usr/bin/env bash
# Re-measure every figure the README quotes, into docs/figures/ (one JSON or text file each),
# with the load average before and after, so a reader can tell a quiet run from a shared one.
#   bash benchmarks/measure_all.sh            (from the repository root, after `make test`)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=docs/figures
mkdir -p "$OUT"
head -c 12000 /usr/share/common-licenses/GPL-3 > /tmp/gpl3-12k.txt
# steal_s: CPU time the hypervisor gave to other guests so far (/proc/stat), summed over vCPUs:
# a step during which it grows by more than a second or two was measured on a stalled VM
note() { echo "{\"step\": \"$1\", \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"steal_s\": $(awk '/^cpu /{print $9 / 100}' /proc/stat), \"date\": \"$(date -u +%FT%TZ)\"}" >> "$OUT/load.jsonl"; }
: > "$OUT/load.jsonl"

note cpu-bench-1thread
OPENBLAS_NUM_THREADS=1 $BIN/perro-pastor bench -m default --backend cpu -p 128 -n 64 --json > "$OUT/bench_cpu_1thread.json"
note cpu-bench-2threads
OPENBLAS_NUM_THREADS=2 $BIN/perro-pastor bench -m default --backend cpu -p 128 -n 64 --json > "$OUT/bench_cpu_2threads.json"
note gl-bench
$BIN/perro-pastor bench -m default --backend gl -p 128 -n 64 --json > "$OUT/bench_gl.json"
note llvmpipe-floor
$BIN/python benchmarks/llvmpipe_floor.py --repeat 30 --rounds 7 --json "$OUT/llvmpipe_floor.json" > /dev/null
note runtime-gl
$BIN/perro-pastor bench -m default --backend gl --sessions 4 --budget-ms 4 -n 12 --restore --json > "$OUT/runtime_gl.json"
note runtime-cpu
$BIN/perro-pastor bench -m default --backend cpu --sessions 4 --budget-ms 4 -n 12 --restore --json > "$OUT/runtime_cpu.json"
note lora
$BIN/python benchmarks/bench_lora.py --backend gl --repeats 9 --batch 0 > "$OUT/lora_gl.jsonl"
$BIN/python benchmarks/bench_lora.py --backend cpu --repeats 3 --batch 0 > "$OUT/lora_cpu.jsonl"
note perplexity
$BIN/perro-pastor perplexity -m default -f /tmp/gpl3-12k.txt -c 256 --backend cpu --json > "$OUT/ppl_cpu_q4_1.json"
$BIN/perro-pastor perplexity -m default -f /tmp/gpl3-12k.txt -c 256 --backend gl --json > "$OUT/ppl_gl_q4_1.json"
$BIN/python -m perro_pastor.tools.requantize default /tmp/smollm2-f16.gguf --type F16 > /dev/null
$BIN/perro-pastor perplexity -m /tmp/smollm2-f16.gguf -f /tmp/gpl3-12k.txt -c 256 --backend cpu --json > "$OUT/ppl_cpu_f16.json"
note rss
/usr/bin/time -f '{"max_rss_kb": %M, "wall_s": %e}' -o "$OUT/rss_generate_cpu.json" \
    $BIN/perro-pastor generate -m default -p "Once upon a time" -n 32 --backend cpu --seed 1 > /dev/null 2>&1
/usr/bin/time -f '{"max_rss_kb": %M, "wall_s": %e}' -o "$OUT/rss_generate_cpu_lean.json" \
    $BIN/perro-pastor generate -m default -p "Once upon a time" -n 32 --backend cpu --cpu-cache-mb 0 --seed 1 > /dev/null 2>&1
/usr/bin/time -f '{"max_rss_kb": %M, "wall_s": %e}' -o "$OUT/rss_generate_gl.json" \
    $BIN/perro-pastor generate -m default -p "Once upon a time" -n 32 --backend gl --seed 1 > /dev/null 2>&1
note game
$BIN/python -m sample_game --autoplay --headless --report "$OUT/game_autoplay.json" > /dev/null 2>&1
# two more runs, summarised one line each: the VM's speed moves the game's figures run to run
: > "$OUT/game_autoplay_more_runs.jsonl"
for run in 2 3; do
    note "game-run-$run"
    $BIN/python -m sample_game --autoplay --headless --report /tmp/game_run.json > /dev/null 2>&1
    $BIN/python -c "import json; d = json.load(open('/tmp/game_run.json')); print(json.dumps({k: v for k, v in d.items() if k not in ('transcript', 'bubble_rects')}))" >> "$OUT/game_autoplay_more_runs.jsonl"
done
note loading
$BIN/python benchmarks/bench_loading.py --backend gl > "$OUT/loading_gl.json"
$BIN/python benchmarks/bench_loading.py --backend cpu > "$OUT/loading_cpu.json"
note done
