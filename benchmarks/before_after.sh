#!/usr/bin/env bash
# The same figures from an older commit and from this tree, alternating, so the machine's drift
# hits both alike (what docs/figures/redesign_before_after.txt recorded for issue 17):
#   git worktree add /tmp/base 7828fc7
#   ln -s ../shaders /tmp/base/perro_pastor/shaders; ln -s ../tools /tmp/base/perro_pastor/tools
#   bash benchmarks/before_after.sh /tmp/base > /tmp/before_after.txt
set -uo pipefail
BASE=${1:?usage: before_after.sh WORKTREE_OF_THE_OLD_COMMIT}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=$HERE/.venv/bin/python
cd /tmp
side_env() { if [ "$1" = old ]; then export PYTHONPATH=$BASE; else unset PYTHONPATH; fi; }
for round in 1 2 3; do
  for side in old new; do
    side_env $side
    echo "== $side round $round bench-cpu $(cut -d' ' -f1 /proc/loadavg)"
    $PY -m perro_pastor.cli bench -m default --backend cpu -p 128 -n 64 --json 2>/dev/null
    echo "== $side round $round generate-cpu"
    $PY -m perro_pastor.cli generate -m default -p "Once upon a time" -n 64 --temp 0 --backend cpu --json 2>/dev/null | tail -1
  done
done
for round in 1 2; do
  for side in old new; do
    side_env $side
    echo "== $side round $round bench-gl"
    $PY -m perro_pastor.cli bench -m default --backend gl -p 32 -n 32 --repeats 2 --json 2>/dev/null
    echo "== $side round $round runtime-cpu"
    $PY -m perro_pastor.cli bench -m default --backend cpu --sessions 4 --budget-ms 4 -n 12 --json 2>/dev/null
  done
done
for round in 1 2 3; do
  for side in old new; do
    side_env $side
    (if [ $side = new ]; then cd "$HERE"; fi
     $PY -m sample_game --autoplay --headless --report /tmp/before_after_game.json > /dev/null 2>&1)
    echo "== $side round $round game $($PY -c "import json; d = json.load(open('/tmp/before_after_game.json')); print(round(d['tok_s'], 1), round(d['frame_ms_p99'], 2), round(d['frame_ms_max'], 2))")"
  done
done
