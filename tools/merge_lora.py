"""Merge LoRA adapters into a model and write a GGUF: W' = W + sum(scale * B @ A).

    python -m perro_pastor.tools.merge_lora BASE ADAPTER[:SCALE]... -o OUT.gguf [--type F16]

BASE is anything ``perro_pastor.load`` accepts (``default``, a path, a model-folder name); each
ADAPTER is a GGUF LoRA or a PEFT folder, read and validated exactly as at run time
(perro_pastor.lora). Every tensor is dequantized, adapted and written as F32 (or F16 for 2-D
tensors with ``--type F16``; norms stay F32), one at a time, so memory stays at about one tensor.
Tests use it as the oracle for run-time adapters; users can bake an NPC's adapter into a file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..config import Config
from ..errors import PerroPastorError
from ..formats import open_model_file
from ..lora import LoraAdapter, base_targets, load_adapter, parse_lora_arg
from ..paths import resolve_model
from ..quant import dequantize
from .requantize import _value_type

OUT_TYPES = {"F32": (np.float32, 0), "F16": (np.float16, 1)}  # numpy dtype, general.file_type


def merge_lora(base: str | Path, adapters: list[tuple[str | Path, float]], out: str | Path,
               out_type: str = "F32") -> Path:
    import gguf  # a tools/test dependency, not needed by the engine
    from ..weights import bind_weights

    if out_type not in OUT_TYPES:
        raise ValueError(f"cannot write {out_type}; choose from {', '.join(OUT_TYPES)}")
    dtype, file_type = OUT_TYPES[out_type]
    mf = open_model_file(resolve_model(str(base)))
    try:
        cfg = Config.from_metadata(mf.metadata, where=mf.path.name)
        model = SimpleNamespace(config=cfg, weights=bind_weights(mf, cfg), file=mf)
        loaded: list[LoraAdapter] = [load_adapter(path, model, scale) for path, scale in adapters]
        part = Path(str(out) + ".part")  # nothing appears at the final name until it is whole
        try:
            _write(gguf, mf, cfg, part, dtype, file_type, loaded, base_targets(model))
            os.replace(part, out)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    finally:
        mf.close()
    return Path(out)


def _write(gguf, mf, cfg, path: Path, dtype, file_type: int, loaded: list[LoraAdapter],
           targets: dict[str, tuple[int, str]]) -> None:
    """Stream the adapted tensors of ``mf`` into a new GGUF at ``path``."""
    writer = gguf.GGUFWriter(str(path), cfg.arch)
    for key, value in mf.metadata.items():
        if key in ("general.architecture", "general.alignment") or key.startswith("GGUF."):
            continue
        if key == "general.file_type":
            value = file_type
        vtype, sub_type = _value_type(gguf, mf.metadata_types[key])
        writer.add_key_value(key, value.tolist() if isinstance(value, np.ndarray) else value,
                             vtype, sub_type=sub_type)

    # tensor infos first, then the data one tensor at a time (the writer's streaming mode)
    def out_dtype(info):
        return np.dtype(np.float32 if len(info.shape) == 1 else dtype)
    for info in mf.tensors.values():
        shape = tuple(reversed(info.shape))
        d = out_dtype(info)
        writer.add_tensor_info(info.name, shape, d, info.n_elements * d.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for info in mf.tensors.values():
        w = dequantize(mf.tensor_bytes(info.name), info.qtype, info.n_elements)
        w = w.reshape(tuple(reversed(info.shape)))
        if info.name in targets:
            for adapter in loaded:
                delta = adapter.delta(*targets[info.name])
                if delta is not None:
                    w += delta
        writer.write_tensor_data(w.astype(out_dtype(info)))
    writer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perro_pastor.tools.merge_lora",
                                description=__doc__.splitlines()[0])
    p.add_argument("base", help="base model: 'default', a path, or a model-folder name")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER[:SCALE]",
                   help="GGUF LoRA file or PEFT folder, with an optional scale (default 1)")
    p.add_argument("-o", "--out", required=True, help="the merged GGUF to write")
    p.add_argument("--type", default="F32", choices=sorted(OUT_TYPES),
                   help="type of 2-D tensors in the output (norms stay F32)")
    args = p.parse_args(argv)
    try:
        merge_lora(args.base, [parse_lora_arg(a) for a in args.adapters], args.out, args.type)
    except (PerroPastorError, ValueError) as e:
        print(f"merge_lora: {e}", file=sys.stderr)
        return 1
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
