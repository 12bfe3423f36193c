# Prepare the GL checks for the workplace's lent GPU machine (the `device` tool): run here, once,
# from the repository root, after `make venv assets`. What a device call can carry is at most
# 64 MiB, and the default model is 98 MB, so it travels in two halves over two calls made back
# to back (the machine stays warm for 30 s between calls; its /tmp survives that long):
#
#   bash benchmarks/device/prepare.sh
#   device run: bash benchmarks/device/run_a.sh   carry [".gl", ".whl", ".dev/common", ".dev/vocab", ".dev/partA"]
#   device run: bash benchmarks/device/run_b.sh   carry [".dev/common", ".dev/partB"]   (at once)
#
# The same two-call pattern measures NPCs in a frame loop and run-ahead on/off:
#   device run: bash benchmarks/device/frames_a.sh   carry [".gl", ".whl", ".dev/common", ".dev/partA"]
#   device run: bash benchmarks/device/frames_b.sh   carry [".dev/common", ".dev/vocab", ".dev/partB"]   (at once)
#
# run_a: GL kernel tests, the synthetic families, benches of a shape twin of the default model
# (benchmarks/shape_twin.py) and of a 1.1B Llama twin; run_b: the real default model's bench,
# generate, and the GL tests that need it. Figures land in $OUT (docs/figures/gl_h200_*).
set -e
for d in /.gl/ /.whl/ /.dev/; do grep -qx "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
mkdir -p .gl .whl .dev/common .dev/vocab .dev/partA .dev/partB /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update >/dev/null
(cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
# the packages the machine's image lacks (it has numpy, numba, pytest, hypothesis, tokenizers...)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .whl \
  moderngl==5.13.0 glcontext==3.1.0 PyOpenGL==3.1.10 platformdirs==4.14.9 gguf==0.19.0 jsonschema==4.26.0 \
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
PY=.venv/bin/python
MODEL=$($PY -c "from perro_pastor.paths import default_model_path; print(default_model_path())")
$PY benchmarks/shape_twin.py header default .dev/common/default.header
head -c 44000000 "$MODEL" > .dev/partA/model.a
tail -c +44000001 "$MODEL" > .dev/partB/model.b
sha256sum "$MODEL" | cut -c1-64 > .dev/partB/sha256
cp "$(dirname "$MODEL")/__init__.py" .dev/partB/init.py
cp tests/assets/vocab/ggml-vocab-{llama-spm,phi-3,qwen2}.gguf .dev/vocab/
cp /usr/share/common-licenses/GPL-3 .dev/common/
du -sh .gl .whl .dev/*
