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

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import quant
from .errors import ModelFormatError
from .formats import ModelFile, TensorInfo, open_model_file
from .weights import LAYER_TENSORS, PROJECTIONS  # the matrices a LoRA can target; norms cannot

Factors = tuple[np.ndarray, np.ndarray]  # A (rank, cols), B (rows, rank)


@dataclass(frozen=True)
class LoraAdapter:
    """Low-rank deltas for some projections of some layers, and the scale they are applied with.

    ``scale = unit_scale * user_scale`` where ``unit_scale`` is alpha / rank (PEFT's rsLoRA:
    alpha / sqrt(rank)). When a file mixes ranks, each B is pre-multiplied so that one scale is
    right for every tensor (llama.cpp scales each tensor by alpha / its own rank)."""
    name: str  # for messages and reprs: the file it came from
    rank: int
    alpha: float
    unit_scale: float
    user_scale: float
    targets: dict[tuple[int, str], Factors] = field(repr=False)

    @property
    def scale(self) -> float:
        return self.unit_scale * self.user_scale

    def factors(self, layer: int, name: str) -> Factors | None:
        """(A, B) for projection ``name`` (llama2.c name) of ``layer``, or None if not adapted."""
        return self.targets.get((layer, name))

    def with_scale(self, user_scale: float) -> "LoraAdapter":
        """The same factors (shared, not copied) under another user scale, e.g. per NPC."""
        return LoraAdapter(self.name, self.rank, self.alpha, self.unit_scale, float(user_scale), self.targets)

    def delta(self, layer: int, name: str) -> np.ndarray | None:
        """scale * B @ A, the (rows, cols) change this adapter makes to one weight (for merging)."""
        f = self.factors(layer, name)
        return None if f is None else (self.scale * (f[1] @ f[0])).astype(np.float32)


def load_adapter(path: str | Path, model, scale: float = 1.0) -> LoraAdapter:
    """Read and validate a LoRA adapter for ``model`` (anything with ``.config`` and ``.weights``,
    e.g. a loaded ``Model``). ``path`` is a GGUF adapter, a PEFT adapter folder, or its
    ``adapter_model.safetensors`` / ``adapter_config.json``."""
    path = Path(path)
    if not math.isfinite(scale):
        raise ValueError(f"{path.name}: LoRA scale must be finite, got {scale}")
    if path.is_dir() or path.suffix in (".safetensors", ".json"):
        from .lora_peft import read_peft
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
# validation shared by both formats

def base_targets(model) -> dict[str, tuple[int, str]]:
    """GGUF base-weight name ('blk.3.attn_q.weight') -> (layer, llama2.c name) for every
    projection of the base model."""
    return {LAYER_TENSORS[p][0].format(l=l): (l, p)
            for l in range(model.config.n_layers) for p in PROJECTIONS}


def check_pair(where: str, a_name: str, b_name: str, a: np.ndarray, b: np.ndarray,
               base: TensorInfo, gguf_order: bool) -> int:
    """Check A (rank, cols) and B (rows, rank) against base weight ``base`` and return the rank.
    Shapes are quoted in the file's own order (GGUF's is reversed) so users can find them."""
    cols, rows = base.shape

    def show(shape) -> str:
        return "[" + ", ".join(map(str, reversed(shape) if gguf_order else shape)) + "]"
    want_a, want_b = show(("rank", cols)), show((rows, "rank"))
    for name, t, want in ((a_name, a, want_a), (b_name, b, want_b)):
        if t.ndim != 2:
            raise ModelFormatError(f"{where}: tensor '{name}' has shape {show(t.shape)}; expected 2-D {want}")
    if a.shape[1] != cols or b.shape[0] != rows:
        hint = (" (hint: A and B look transposed)"
                if a.shape[0] == cols or b.shape[1] == rows else "")
        raise ModelFormatError(
            f"{where}: LoRA pair '{a_name}' {show(a.shape)} / '{b_name}' {show(b.shape)} does not fit "
            f"base weight '{base.name}' {show(tuple(reversed(base.shape)))}: expected {want_a} / {want_b}{hint}")
    if a.shape[0] != b.shape[1]:
        raise ModelFormatError(
            f"{where}: rank mismatch: '{a_name}' has rank {a.shape[0]}, '{b_name}' has rank {b.shape[1]}")
    for name, t in ((a_name, a), (b_name, b)):
        if not np.isfinite(t).all():
            raise ModelFormatError(f"{where}: tensor '{name}' holds NaN or infinite values")
    return a.shape[0]


def build_adapter(name: str, pairs: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, int]],
                  alpha: float, rsqrt: bool, user_scale: float) -> LoraAdapter:
    """Assemble a LoraAdapter from checked (A, B, rank) pairs. The nominal rank is the most common
    one; other ranks are folded into B so ``scale`` is one number."""
    if not pairs:
        raise ModelFormatError(f"{name}: the adapter holds no LoRA tensors")
    ranks = [r for _, _, r in pairs.values()]
    rank = max(set(ranks), key=ranks.count)
    per_rank = (lambda r: 1 / math.sqrt(r)) if rsqrt else (lambda r: 1 / r)
    if alpha == 0:  # llama.cpp: no alpha means scale = user scale
        alpha = 1 / per_rank(rank)
    targets = {}
    for key, (a, b, r) in pairs.items():
        fold = per_rank(r) / per_rank(rank)
        b = b if r == rank else b * np.float32(fold)
        targets[key] = (np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32))
    return LoraAdapter(name, rank, float(alpha), alpha * per_rank(rank), user_scale, targets)


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
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ModelFormatError(f"{where}: adapter.lora.alpha must be a finite number >= 0, got {alpha!r}")

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


# -----------------------------------------------------------------------------
# a transformer with fixed adapters (what `--lora` on generate / perplexity needs)

class AdaptedTransformer:
    """Wraps a backend so that plain ``forward`` calls apply ``adapters``; code written for an
    unadapted transformer (Model.generate, perplexity) runs unchanged. The wrapped backend and
    its weights are shared, not copied."""

    def __init__(self, transformer, adapters: tuple[LoraAdapter, ...]):
        self.transformer, self.adapters = transformer, tuple(adapters)
        self.name = transformer.name

    def new_cache(self, n_ctx: int):
        return self.transformer.new_cache(n_ctx)

    def forward(self, tokens: np.ndarray, pos0: int, kv, all_logits: bool = False, trace=None) -> np.ndarray:
        from .cpu import Segment, run_to_end
        steps = self.transformer.forward_steps([Segment(tokens, pos0, kv, self.adapters)], all_logits, trace)
        return run_to_end(steps)[0]
