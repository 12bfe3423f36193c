#!/usr/bin/env bash
# Perplexity of the default model in every quant type the engine loads, ours (cpu backend,
# compiled kernels) beside llama.cpp's, on the same files and text.
#
#   bash benchmarks/ppl_quant_types.sh LLAMA_CPP_BIN_DIR [OUT.jsonl]
#
# Beside each file's figures, llama.cpp's perplexity on the F32 expansion of the *same* weights
# (our requantize tool, dequantizing): the oracle for what the quantized weights give when the
# activations are not quantized. llama.cpp multiplies quantized weights by 8-bit-quantized
# activations, we by float32 ones, so the two engines differ by that rounding of the activations;
# against the F32 expansion we should agree to a few hundredths of a percent.
#
# LLAMA_CPP_BIN_DIR holds llama-quantize and llama-perplexity, built from the llama.cpp that
# llama-cpp-python 0.3.36 vendors (pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36,
# then cmake in vendor/llama.cpp). The variants are made by llama.cpp's own quantizer from an F32
# export of the default model. Rows of 576 weights are not a multiple of 256, so in the K-quant
# files llama-quantize falls back to a 32-block type for those tensors (llama.cpp's choice).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:?give the folder with llama-quantize and llama-perplexity}
OUT=${2:-docs/figures/ppl_quant_types.jsonl}
WORK=${PPL_WORK_DIR:-/tmp/ppl_quant_types}
mkdir -p "$WORK"
head -c 12000 /usr/share/common-licenses/GPL-3 > "$WORK/text.txt"
.venv/bin/python -m perro_pastor.tools.requantize default "$WORK/f32.gguf" --type F32 > /dev/null
: > "$OUT"
for type in F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K; do
    file="$WORK/$type.gguf"
    [ "$type" = F32 ] && file="$WORK/f32.gguf"
    [ "$type" = F32 ] || "$BIN_DIR/llama-quantize" "$WORK/f32.gguf" "$file" "$type" 2 > /dev/null 2>&1
    llama_ppl() { "$BIN_DIR/llama-perplexity" -m "$1" -f "$WORK/text.txt" -c 256 -t 2 2>&1 \
                  | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'; }
    theirs=$(llama_ppl "$file")
    .venv/bin/python -m perro_pastor.tools.requantize "$file" "$WORK/expanded.gguf" --type F32 > /dev/null
    theirs_f32=$(llama_ppl "$WORK/expanded.gguf")
    ours=$(.venv/bin/perro-pastor perplexity -m "$file" -f "$WORK/text.txt" -c 256 --backend cpu --json \
           | .venv/bin/python -c "import json, sys; print(json.load(sys.stdin)['ppl'])")
    types=$(.venv/bin/python - "$file" <<'EOF'
import collections, sys
from perro_pastor.formats import open_model_file
mf = open_model_file(sys.argv[1])
print(",".join(f"{k}:{v}" for k, v in sorted(collections.Counter(t.qtype.name for t in mf.tensors.values()).items())))
EOF
)
    echo "{\"type\": \"$type\", \"tensor_types\": \"$types\", \"ppl_llama_cpp\": $theirs, \"ppl_ours\": $ours, \"ratio\": $(.venv/bin/python -c "print(round($ours / $theirs, 5))"), \"ppl_llama_cpp_same_weights_f32\": $theirs_f32, \"ratio_to_same_weights_f32\": $(.venv/bin/python -c "print(round($ours / $theirs_f32, 5))")}" | tee -a "$OUT"
done
