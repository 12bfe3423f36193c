# Device call 1 of 2 for the frame-loop figures (issue 19: the scheduler's wait on GPU fences within
# its budget). Same carry as run_a.sh (see prepare.sh); keeps the model's first half for frames_b.sh.
#   device run: bash benchmarks/device/frames_a.sh   carry [".gl", ".whl", ".dev/common", ".dev/vocab", ".dev/partA"]
source benchmarks/device/setup.sh
cp .dev/partA/model.a /tmp/model.a; cp .dev/vocab/* tests/assets/vocab/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 benchmarks/shape_twin.py fill .dev/common/default.header /tmp/default-twin.gguf
python3 benchmarks/frame_paced.py /tmp/default-twin.gguf --sessions 1 4 2>/dev/null | tee $OUT/frames_twin.jsonl
pp bench -m /tmp/default-twin.gguf --backend gl -p 128 -n 64 --sessions 1 --budget-ms 4 --json 2>/dev/null | tee $OUT/back_to_back_twin.jsonl
python3 benchmarks/shape_twin.py llama1b /tmp/twin-1b.gguf
pp bench -m /tmp/twin-1b.gguf --backend gl -p 128 -n 64 --json 2>/dev/null | tee $OUT/bench_1b.jsonl
python3 benchmarks/frame_paced.py /tmp/twin-1b.gguf --sessions 1 --tokens 64 2>/dev/null | tee -a $OUT/frames_1b.jsonl
ls -la /tmp/model.a
