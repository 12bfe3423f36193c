# Device call 1 of 2 for the frame-loop figures (issue 19: NPCs in a 60 Hz frame loop, decode passes
# run ahead of the CPU or not: benchmarks/run_ahead_ab.py). Keeps the model's first half for frames_b.sh.
#   device run: bash benchmarks/device/frames_a.sh   carry [".gl", ".whl", ".dev/common", ".dev/partA"]
source benchmarks/device/setup.sh
cp .dev/partA/model.a /tmp/model.a
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 benchmarks/shape_twin.py fill .dev/common/default.header /tmp/default-twin.gguf
python3 benchmarks/run_ahead_ab.py /tmp/default-twin.gguf 2>/dev/null | tee $OUT/run_ahead_twin.jsonl
ls -la /tmp/model.a
