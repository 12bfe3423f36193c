# Device call 1 of 2 (see prepare.sh): the parts that need no real model file; keeps the model's first half.
source benchmarks/device/setup.sh
ln -sfn ../tools perro_pastor/tools
cp .dev/partA/model.a /tmp/model.a; cp .dev/vocab/* tests/assets/vocab/
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import moderngl; c=moderngl.create_standalone_context(require=430, backend='egl'); print(c.info['GL_RENDERER'], c.info['GL_VERSION'])" | tee -a $OUT/gpu.txt
python3 benchmarks/shape_twin.py fill .dev/common/default.header /tmp/default-twin.gguf
for i in 1 2 3; do pp bench -m /tmp/default-twin.gguf --backend gl -p 128 -n 64 --json 2>/dev/null; done | tee $OUT/bench_twin.jsonl
pp bench -m /tmp/default-twin.gguf --backend gl -p 128 -n 64 --sessions 1 --budget-ms 4 --json 2>/dev/null | tee -a $OUT/bench_twin.jsonl
pp bench -m /tmp/default-twin.gguf --backend gl -p 128 -n 64 --sessions 4 --budget-ms 4 --json 2>/dev/null | tee -a $OUT/bench_twin.jsonl
python3 benchmarks/gl_variants.py /tmp/default-twin.gguf 2>/dev/null | tee $OUT/bench_variants.jsonl
python3 benchmarks/shape_twin.py llama1b /tmp/twin-1b.gguf
for i in 1 2; do pp bench -m /tmp/twin-1b.gguf --backend gl -p 128 -n 64 --json 2>/dev/null; done | tee $OUT/bench_1b.jsonl
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gl_fused.py tests/test_gl_matvec.py tests/test_gl_layer_ops.py tests/test_gl_sampling.py tests/test_gl_matmul.py tests/test_gl_context.py tests/test_gl_shader_loader.py 2>&1 | tail -3 | tee $OUT/tests_a.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_families.py tests/test_gl_decode_path.py -k "gl_backend_runs_each or each_family or lanes" 2>&1 | tail -4 | tee -a $OUT/tests_a.txt
ls -la /tmp/model.a
