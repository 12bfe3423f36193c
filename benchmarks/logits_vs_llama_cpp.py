"""Logits at every position against llama.cpp's, per model family (issue 21's proof).

    PYTHONPATH=SDIST:EXTRA LLAMA_CPP_LIB_PATH=SDIST/vendor/llama.cpp/build/bin \\
        .venv/bin/python benchmarks/logits_vs_llama_cpp.py [--json docs/figures/logits_vs_llama_cpp.json]

SDIST is llama-cpp-python 0.3.36's unpacked sdist (its ``llama_cpp`` package: ctypes bindings
over the libllama it vendors, built as docs/model_families.md says); EXTRA holds ``diskcache``,
which the bindings import. The synthetic files are written by tests/family_models.py; the real
Gemma 3 270M is the test asset. Both engines read the same tokens (llama.cpp's tokenization of
the text, BOS included) and every position's logits are compared: the largest difference, as a
fraction of the largest logit, and how often the two argmaxes agree. On a quantized file llama.cpp
rounds activations to 8 bits before each product; the F32 expansion of the same weights shows
what is left without that.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from family_models import write_family_model  # noqa: E402

import llama_cpp  # noqa: E402
from perro_pastor.model import load  # noqa: E402
from perro_pastor.tools.requantize import requantize  # noqa: E402

TEXT = b"The miller's daughter walked down to the river, where the old bridge crossed the water, and sang."
GEMMA3 = Path(__file__).resolve().parent.parent / "tests" / "assets" / "gemma-3-270m-q4_k_m.gguf"


def compare(path: Path, backends=("cpu", "gl")) -> dict:
    ref = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    tokens = ref.tokenize(TEXT, add_bos=True, special=False)
    ref.eval(tokens)
    want = np.array(ref.scores[:len(tokens)], dtype=np.float64)
    row = {"tokens": len(tokens)}
    for backend in backends:
        model = load(path, backend=backend)
        got = model.transformer.forward(np.array(tokens), 0, model.transformer.new_cache(128), all_logits=True)
        model.close()
        row[backend] = {"max_abs_diff": round(float(np.abs(got - want).max()), 5),
                        "max_logit": round(float(np.abs(want).max()), 3),
                        "relative": round(float(np.abs(got - want).max() / np.abs(want).max()), 6),
                        "argmax_agree": round(float((got.argmax(-1) == want.argmax(-1)).mean()), 3)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("qwen2", "qwen3", "phi3", "gemma2"):
            rows[arch] = compare(write_family_model(arch, Path(tmp) / f"{arch}.gguf"))
            print(arch, rows[arch], flush=True)
        rows["gemma3-270m-q4_k_m"] = compare(GEMMA3)
        print("gemma3-270m-q4_k_m", rows["gemma3-270m-q4_k_m"], flush=True)
        # the same weights in float32: llama.cpp then multiplies without rounding activations to
        # 8 bits, and what is left of the difference is the two engines' own arithmetic
        f32 = requantize(GEMMA3, Path(tmp) / "gemma3-f32.gguf", "F32")
        rows["gemma3-270m, its F32 expansion"] = compare(f32, backends=("cpu",))
        print("gemma3-270m F32", rows["gemma3-270m, its F32 expansion"])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
