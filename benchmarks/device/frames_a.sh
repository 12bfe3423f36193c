# Device call 1 of 2 for the frame-loop figures (issue 19: NPCs in a 60 Hz frame loop, `bench --frame-ms`).
# Same carry as run_a.sh (see prepare.sh); keeps the model's first half for frames_b.sh.
#   device run: bash benchmarks/device/frames_a.sh   carry [".gl", ".whl", ".dev/common", ".dev/vocab", ".dev/partA"]
source benchmarks/device/setup.sh
cp .dev/partA/model.a /tmp/model.a; cp .dev/vocab/* tests/assets/vocab/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 benchmarks/shape_twin.py fill .dev/common/default.header /tmp/default-twin.gguf
for n in 1 4; do pp bench -m /tmp/default-twin.gguf --backend gl -n 128 --sessions $n --budget-ms 4 --frame-ms 16.667 --json 2>/dev/null; done | tee $OUT/frames_twin.jsonl
pp bench -m /tmp/default-twin.gguf --backend gl -p 128 -n 64 --sessions 1 --budget-ms 4 --json 2>/dev/null | tee $OUT/back_to_back_twin.jsonl
python3 benchmarks/shape_twin.py llama1b /tmp/twin-1b.gguf
pp bench -m /tmp/twin-1b.gguf --backend gl -p 128 -n 64 --json 2>/dev/null | tee $OUT/bench_1b.jsonl
pp bench -m /tmp/twin-1b.gguf --backend gl -n 64 --sessions 1 --budget-ms 4 --frame-ms 16.667 --json 2>/dev/null | tee $OUT/frames_1b.jsonl
ls -la /tmp/model.a
