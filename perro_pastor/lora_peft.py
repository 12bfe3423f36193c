"""PEFT LoRA adapters: ``adapter_model.safetensors`` + ``adapter_config.json``.

Hugging Face names and lays out weights differently from GGUF, so loading maps both:
- module names: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj -> wq wk wv wo w1 w3 w2;
- tensor layout: PEFT's lora_A.weight is (r, in) and lora_B.weight is (out, r), the same as ours;
- q/k rows: HF rotates each head's halves (i, i + head_size/2) in RoPE, GGUF rotates adjacent
  pairs (2i, 2i+1). llama.cpp's converter therefore permutes the rows of q_proj and k_proj, per
  head: GGUF row 2i+c of a head is HF row c*head_size/2 + i. The output rows of a LoRA's B are rows
  of the same weight, so B of q and k gets the same permutation (A, on the input side, does not).
  Families that rotate halves themselves (NeoX rope: qwen, phi, gemma) are converted without it,
  and their B keeps HF's order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .errors import ModelFormatError
from .lora_adapter import MAX_ALPHA, LoraAdapter, alpha_ok, build_adapter, check_pair

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# PEFT module -> (parent module in a Llama decoder layer, llama2.c name)
PEFT_MODULES = {
    "q_proj": ("self_attn", "wq"), "k_proj": ("self_attn", "wk"), "v_proj": ("self_attn", "wv"),
    "o_proj": ("self_attn", "wo"), "gate_proj": ("mlp", "w1"), "up_proj": ("mlp", "w3"),
    "down_proj": ("mlp", "w2"),
}
TENSOR_NAME = re.compile(
    r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight")


def permute_rows_for_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF row order of a q or k projection (rows = n_head * head_size)."""
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def read_peft(path: Path, model, user_scale: float) -> LoraAdapter:
    folder = path if path.is_dir() else path.parent
    for name in (CONFIG_NAME, WEIGHTS_NAME):  # a FIFO would block the read forever
        if (folder / name).exists() and not (folder / name).is_file():
            raise ModelFormatError(f"{folder.name or folder}/{name}: not a regular file")
    config = _read_config(folder / CONFIG_NAME, folder.name or str(folder))
    rank, alpha = config["r"], config["lora_alpha"]
    where = f"{folder.name}/{WEIGHTS_NAME}"  # tensor errors name the weights file
    tensors = _read_tensors(folder / WEIGHTS_NAME, where)
    cfg = model.config

    halves: dict[tuple[int, str], dict[str, tuple[str, np.ndarray]]] = {}
    for name, t in tensors.items():
        m = TENSOR_NAME.fullmatch(name)
        if not m or m.group(3) not in PEFT_MODULES or PEFT_MODULES[m.group(3)][0] != m.group(2) \
                or int(m.group(1)) >= cfg.n_layers:
            raise ModelFormatError(
                f"{where}: tensor '{name}' matches no weight of the base model (expected "
                f"'base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight' with N < {cfg.n_layers}, "
                f"modules {', '.join(PEFT_MODULES)})")
        module = m.group(3)
        if config["modules"] is not None and module not in config["modules"]:
            raise ModelFormatError(f"{where}: tensor '{name}' is for module '{module}', "
                                   f"which is not in target_modules {sorted(config['modules'])}")
        halves.setdefault((int(m.group(1)), PEFT_MODULES[module][1]), {})[m.group(4)] = (name, t)

    pairs = {}
    for (l, proj), pair in halves.items():
        for half in "AB":
            if half not in pair:
                other = next(iter(pair.values()))[0]
                raise ModelFormatError(f"{where}: '{other}' has no matching lora_{half} tensor")
        (a_name, a), (b_name, b) = pair["A"], pair["B"]
        r = check_pair(where, a_name, b_name, a, b, getattr(model.weights.layers[l], proj), gguf_order=False)
        if r != rank:
            raise ModelFormatError(f"{where}: rank mismatch: '{a_name}' has rank {r}, "
                                   f"{CONFIG_NAME} says r = {rank}")
        if proj in ("wq", "wk") and not cfg.family.rope_neox:  # (NeoX files keep HF's row order)
            b = permute_rows_for_rope(b, cfg.n_heads if proj == "wq" else cfg.n_kv_heads)
        pairs[(l, proj)] = (a, b, r)
    return build_adapter(where, pairs, alpha, config["rslora"], user_scale)


def _read_config(path: Path, where: str) -> dict:
    """The fields of adapter_config.json that matter, checked; unsupported variants refused."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelFormatError(f"{where}: cannot read {path.name}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{where}: {path.name} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{where}: {path.name} must hold a JSON object")

    def field(key, ok, want, default=None):
        value = raw.get(key, default)
        if not ok(value):
            raise ModelFormatError(f"{where}: {path.name}: {key} = {value!r}, expected {want}")
        return value

    field("peft_type", lambda v: v in (None, "LORA"), "'LORA'")
    r = field("r", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer")
    alpha = field("lora_alpha", alpha_ok, f"a finite number in 0..{MAX_ALPHA:g}", default=r)
    rslora = field("use_rslora", lambda v: v is None or isinstance(v, bool), "true or false", default=False)
    for key, default, want in (("use_dora", False, False), ("fan_in_fan_out", False, False),
                               ("bias", "none", "none")):
        field(key, lambda v: v in (None, want), f"{want!r} (other variants are not supported)", default)
    for key in ("rank_pattern", "alpha_pattern"):
        field(key, lambda v: not v, "empty (per-module ranks are not supported)")
    targets = raw.get("target_modules")
    modules = None  # None: a regex or 'all-linear'; tensor names are checked one by one
    if isinstance(targets, list):
        for t in targets:
            if t not in PEFT_MODULES:
                raise ModelFormatError(f"{where}: {path.name}: unknown target module {t!r} "
                                       f"(supported: {', '.join(PEFT_MODULES)})")
        modules = set(targets)
    elif not isinstance(targets, str):
        raise ModelFormatError(f"{where}: {path.name}: target_modules = {targets!r}, expected a list or a string")
    return {"r": r, "lora_alpha": float(alpha), "modules": modules,
            "rslora": rslora is True}


def _read_tensors(path: Path, where: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in ("F32", "F16", "F64"):
                    raise ModelFormatError(f"{where}: tensor '{name}' is {dtype}; save the adapter as "
                                           "float32 or float16 (numpy cannot read other types)")
                out[name] = f.get_tensor(name).astype(np.float32)
    except FileNotFoundError:
        raise ModelFormatError(f"{where}: file not found") from None
    except (SafetensorError, OSError) as e:
        raise ModelFormatError(f"{where}: not a valid safetensors file: {e}") from None
    return out
