"""Make a "shape twin" of a GGUF model: the same header, metadata, vocabulary and tensor table, with
freshly quantized random weights. Speed depends only on shapes and types, so a twin benchmarks like
the original where the original cannot travel (the GPU machine takes at most 64 MiB of files).

    python benchmarks/shape_twin.py header default twin.header     # ~2 MB: header + tensor table
    python benchmarks/shape_twin.py fill twin.header twin.gguf       # on the other machine
"""

from __future__ import annotations

import json
import struct
import sys

import numpy as np


def header(src: str, out: str) -> None:
    from perro_pastor.formats import open_model_file
    from perro_pastor.paths import resolve_model

    mf = open_model_file(resolve_model(src))
    data_start = min(t.offset for t in mf.tensors.values())
    table = [[t.name, t.qtype.name, list(t.shape), t.offset, t.nbytes] for t in mf.tensors.values()]
    size = mf.path.stat().st_size
    with open(mf.path, "rb") as f:
        head = f.read(data_start)
    blob = json.dumps({"size": size, "tensors": table}).encode()
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + head)


def fill(head_path: str, out: str) -> None:
    import gguf

    with open(head_path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        info = json.loads(f.read(n))
        head = f.read()
    rng = np.random.default_rng(0)
    with open(out, "wb") as f:
        f.write(head)
        f.truncate(info["size"])
        for name, qtype, shape, offset, nbytes in info["tensors"]:
            weights = (rng.standard_normal(tuple(reversed(shape))) * 0.05).astype(np.float32)
            if qtype == "F32":
                data = (1.0 + weights).astype(np.float32).tobytes()
            else:
                data = gguf.quants.quantize(weights, gguf.GGMLQuantizationType[qtype]).tobytes()
            assert len(data) == nbytes, (name, len(data), nbytes)
            f.seek(offset)
            f.write(data)


if __name__ == "__main__":
    {"header": header, "fill": fill}[sys.argv[1]](*sys.argv[2:])
