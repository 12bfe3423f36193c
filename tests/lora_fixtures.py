"""Builders for synthetic LoRA adapters: random low-rank factors written as llama.cpp GGUF LoRAs
(with the gguf writer) or as PEFT folders (with safetensors), plus knobs to break them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from perro_pastor.weights import LAYER_TENSORS, PROJECTIONS

PEFT_NAMES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
              "wo": "self_attn.o_proj", "w1": "mlp.gate_proj", "w3": "mlp.up_proj", "w2": "mlp.down_proj"}


def proj_shape(cfg, proj: str) -> tuple[int, int]:
    """(rows, cols) of a projection, from the config alone."""
    cols, rows = LAYER_TENSORS[proj][1](cfg)
    return rows, cols


def random_factors(cfg, rank: int, rng: np.random.Generator, layers=None, projections=PROJECTIONS,
                   size: float = 0.05) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """(layer, proj) -> (A (rank, cols), B (rows, rank)) float32, big enough to move the logits."""
    out = {}
    for l in range(cfg.n_layers) if layers is None else layers:
        for p in projections:
            rows, cols = proj_shape(cfg, p)
            a = rng.normal(0, size, (rank, cols)).astype(np.float32)
            b = rng.normal(0, size, (rows, rank)).astype(np.float32)
            out[(l, p)] = (a, b)
    return out


def gguf_tensors(factors) -> dict[str, np.ndarray]:
    """GGUF LoRA tensor names -> numpy arrays (the writer reverses shapes into GGUF order)."""
    out = {}
    for (l, p), (a, b) in factors.items():
        base = LAYER_TENSORS[p][0].format(l=l)
        out[f"{base}.lora_a"], out[f"{base}.lora_b"] = a, b
    return out


def write_gguf_lora(path: Path, tensors: dict[str, np.ndarray], alpha: float | None = 16.0,
                    arch: str = "llama", general_type: str | None = "adapter",
                    adapter_type: str | None = "lora", f16: bool = False) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    if general_type is not None:
        w.add_type(general_type)
    if adapter_type is not None:
        w.add_string("adapter.type", adapter_type)
    if alpha is not None:
        w.add_float32("adapter.lora.alpha", alpha)
    for name, t in tensors.items():
        w.add_tensor(name, t.astype(np.float16 if f16 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def peft_tensors(factors) -> dict[str, np.ndarray]:
    """PEFT tensor names -> arrays; factors must already be in HF row order."""
    out = {}
    for (l, p), (a, b) in factors.items():
        stem = f"base_model.model.model.layers.{l}.{PEFT_NAMES[p]}"
        out[f"{stem}.lora_A.weight"], out[f"{stem}.lora_B.weight"] = a, b
    return out


def write_peft(folder: Path, tensors: dict[str, np.ndarray], r: int, alpha: float = 16.0,
               target_modules=None, **extra) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if target_modules is None:
        target_modules = sorted({name.split(".")[-3] for name in tensors}) or ["q_proj"]
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": target_modules,
              "bias": "none", "fan_in_fan_out": False, **extra}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    return folder
