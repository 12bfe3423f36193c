"""LoRA adapters applied at run time: y = W x + scale * B (A x), base weights never touched.

    adapter = perro_pastor.lora.load_adapter("guard.gguf", model, scale=0.8)
    Segment(tokens, pos0, kv, adapters=(adapter,))      # cpu.py applies it per batch segment

An adapter is an independent object: low-rank factors per projection plus a scale. Sessions hold
their own tuple of adapters and can swap them between turns; the model is never reloaded, and
sequences with different adapters still decode in one batch (cpu.CpuTransformer.project).

Two file formats are read, both validated against the base model (RELIABILITY.md row 23):
- llama.cpp's GGUF LoRA (this module), read with our hardened GGUF reader;
- PEFT's adapter_model.safetensors + adapter_config.json (lora_peft.py).
Factors are kept in the forward pass's layout: A (rank, cols), B (rows, rank), float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import quant
from .errors import ModelFormatError
from .formats import ModelFile, TensorInfo, open_model_file
from .lora_adapter import (MAX_ALPHA, LoraAdapter, alpha_ok, base_targets, build_adapter, check_pair,
                           check_user_scale)
from .lora_peft import read_peft

__all__ = ["LoraAdapter", "base_targets", "load_adapter", "parse_lora_arg", "read_gguf_lora"]

def load_adapter(path: str | Path, model, scale: float = 1.0) -> LoraAdapter:
    """Read and validate a LoRA adapter for ``model`` (anything with ``.config`` and ``.weights``,
    e.g. a loaded ``Model``). ``path`` is a GGUF adapter, a PEFT adapter folder, or its
    ``adapter_model.safetensors`` / ``adapter_config.json``."""
    path = Path(path)
    scale = check_user_scale(scale, path.name)
    if path.is_dir() or path.suffix in (".safetensors", ".json"):
        return read_peft(path, model, float(scale))
    return read_gguf_lora(path, model, float(scale))


def parse_lora_arg(arg: str) -> tuple[str, float]:
    """A command-line ``--lora FILE[:SCALE]`` value: 'npc.gguf:0.5' -> ('npc.gguf', 0.5).
    Without a numeric suffix the scale is 1 (so 'C:/npc.gguf' stays a path)."""
    path, sep, tail = arg.rpartition(":")
    if sep:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return arg, 1.0


# -----------------------------------------------------------------------------
# llama.cpp's GGUF LoRA

def read_gguf_lora(path: Path, model, user_scale: float) -> LoraAdapter:
    """A GGUF with general.type = adapter, adapter.type = lora, adapter.lora.alpha and tensor
    pairs '<base name>.lora_a' (GGUF [cols, rank]) / '.lora_b' (GGUF [rank, rows])."""
    mf = open_model_file(path)
    try:
        return _gguf_lora(mf, model, user_scale)
    finally:
        mf.close()


def _gguf_lora(mf: ModelFile, model, user_scale: float) -> LoraAdapter:
    where, md = mf.path.name, mf.metadata
    if mf.format != "gguf":
        raise ModelFormatError(f"{where}: a LoRA adapter must be a GGUF file, this is {mf.format}")
    general_type = md.get("general.type")
    if general_type != "adapter":
        raise ModelFormatError(f"{where}: general.type is {general_type!r}, expected 'adapter' "
                               "(is this a model rather than a LoRA adapter?)")
    adapter_type = md.get("adapter.type")
    if adapter_type != "lora":
        raise ModelFormatError(f"{where}: adapter.type is {adapter_type!r}, expected 'lora'")
    arch, base_arch = md.get("general.architecture"), model.config.arch
    if arch != base_arch:
        raise ModelFormatError(f"{where}: general.architecture is {arch!r}, the base model is {base_arch!r}")
    alpha = md.get("adapter.lora.alpha", 0.0)
    if not alpha_ok(alpha):
        raise ModelFormatError(f"{where}: adapter.lora.alpha must be a finite number in 0..{MAX_ALPHA:g}, "
                               f"got {alpha!r}")

    halves: dict[str, dict[str, TensorInfo]] = {}
    for name, info in mf.tensors.items():
        base_name, _, half = name.rpartition(".")
        if half not in ("lora_a", "lora_b"):
            raise ModelFormatError(f"{where}: tensor '{name}' is not a LoRA half (names end in .lora_a / .lora_b)")
        halves.setdefault(base_name, {})[half] = info

    known = base_targets(model)
    pairs = {}
    for base_name, pair in halves.items():
        if base_name not in known and base_name in getattr(getattr(model, "file", None), "tensors", ()):
            raise ModelFormatError(
                f"{where}: tensor '{base_name}.{next(iter(pair))}' targets '{base_name}', which run-time "
                "LoRA does not cover (only the attention and feed-forward projections)")
        if base_name not in known:
            raise ModelFormatError(
                f"{where}: tensor '{base_name}.{next(iter(pair))}' targets '{base_name}', which is no projection of "
                f"the base model (expected e.g. 'blk.0.attn_q.weight' with layers 0..{model.config.n_layers - 1})")
        for half in ("lora_a", "lora_b"):
            if half not in pair:
                raise ModelFormatError(
                    f"{where}: LoRA pair for '{base_name}' is missing its other half '{base_name}.{half}'")
        l, proj = known[base_name]
        a, b = (_dequantize(mf, pair[h]) for h in ("lora_a", "lora_b"))
        rank = check_pair(where, pair["lora_a"].name, pair["lora_b"].name, a, b,
                          getattr(model.weights.layers[l], proj), gguf_order=True)
        pairs[(l, proj)] = (a, b, rank)
    return build_adapter(where, pairs, float(alpha), False, user_scale)


def _dequantize(mf: ModelFile, info: TensorInfo) -> np.ndarray:
    """Any type quant.dequantize handles, as float32 in numpy order (GGUF shape reversed)."""
    flat = quant.dequantize(mf.tensor_bytes(info.name), info.qtype, info.n_elements)
    return flat.reshape(tuple(reversed(info.shape)))
