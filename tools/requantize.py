"""Re-quantize a model (or its first N layers) into another GGML type and write a GGUF.

    python -m perro_pastor.tools.requantize MODEL OUT.gguf --type F16 [--layers 2]

Tests use it to derive every quant variant from the embedded default model (DESIGN.md §6); users
can use it to try a type on their own model. Reading goes through our hardened reader; writing and
quantizing through the `gguf` package (the reference writer and quantizer). K-quants cannot be
written this way (`gguf` only dequantizes them); norms and 1-D tensors stay F32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..formats import open_model_file
from ..paths import resolve_model
from ..quant import GGMLType, dequantize

WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def _value_type(gguf, type_name: str):
    if type_name.startswith("ARRAY["):
        return gguf.GGUFValueType.ARRAY, gguf.GGUFValueType[type_name[6:-1]]
    return gguf.GGUFValueType[type_name], None


def requantize(src: str | Path, dst: str | Path, qtype: str, n_layers: int | None = None) -> Path:
    import gguf  # a tools/test dependency, not needed by the engine

    if qtype not in WRITABLE:
        raise ValueError(f"cannot write {qtype}; choose from {', '.join(WRITABLE)}")
    mf = open_model_file(resolve_model(str(src)))
    arch = mf.metadata["general.architecture"]
    writer = gguf.GGUFWriter(str(dst), arch)
    for key, value in mf.metadata.items():
        if key in ("general.architecture", "general.alignment") or key.startswith("GGUF."):
            continue
        if key == f"{arch}.block_count" and n_layers is not None:
            value = n_layers
        vtype, sub_type = _value_type(gguf, mf.metadata_types[key])
        if isinstance(value, np.ndarray):
            value = value.tolist()
        writer.add_key_value(key, value, vtype, sub_type=sub_type)

    target = gguf.GGMLQuantizationType[qtype]
    for info in mf.tensors.values():
        if n_layers is not None and info.name.startswith("blk.") and int(info.name.split(".")[1]) >= n_layers:
            continue
        weights = dequantize(mf.tensor_bytes(info.name), info.qtype, info.n_elements)
        weights = weights.reshape(tuple(reversed(info.shape)))  # numpy order: rows first
        if len(info.shape) == 1 or target == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(info.name, weights.astype(np.float32))
        else:
            data = gguf.quants.quantize(weights, target)
            writer.add_tensor(info.name, data, raw_shape=data.shape, raw_dtype=target)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    mf.close()
    return Path(dst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--type", required=True, choices=WRITABLE)
    p.add_argument("--layers", type=int, help="keep only the first N layers")
    args = p.parse_args(argv)
    requantize(args.model, args.out, args.type, args.layers)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
