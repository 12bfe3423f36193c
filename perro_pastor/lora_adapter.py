"""A LoRA adapter in memory (``LoraAdapter``: per-projection A and B factors and one scale), and
the checks both file formats share (lora.py reads GGUF adapters, lora_peft.py PEFT folders)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelFormatError
from .formats import TensorInfo
from .weights import LAYER_TENSORS, PROJECTIONS  # the matrices a LoRA can target; norms cannot

Factors = tuple[np.ndarray, np.ndarray]  # A (rank, cols), B (rows, rank)
MAX_USER_SCALE = 1e3  # |scale| a game may ask for; far past any useful strength, short of garbage
MAX_ALPHA = 1e4  # lora_alpha / adapter.lora.alpha in a file; trainers use 1..~1024


def check_user_scale(scale, where: str) -> float:
    """A user's LoRA scale as a float, or ValueError naming it (not a number, NaN/inf, too big)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: LoRA scale must be a number, got {scale!r:.40}")
    if not math.isfinite(scale) or abs(scale) > MAX_USER_SCALE:
        raise ValueError(f"{where}: LoRA scale must be finite and within ±{MAX_USER_SCALE:g}, got {scale!r}")
    return float(scale)


def alpha_ok(alpha) -> bool:
    """A LoRA alpha read from a file: a finite number in 0..MAX_ALPHA."""
    return isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) \
        and 0 <= alpha <= MAX_ALPHA


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

    def __post_init__(self):
        check_user_scale(self.user_scale, self.name)
        if not alpha_ok(self.alpha):
            raise ModelFormatError(f"{self.name}: LoRA alpha must be a finite number in 0..{MAX_ALPHA:g}, "
                                   f"got {self.alpha!r}")

    @property
    def scale(self) -> float:
        return self.unit_scale * self.user_scale

    def factors(self, layer: int, name: str) -> Factors | None:
        """(A, B) for projection ``name`` (llama2.c name) of ``layer``, or None if not adapted."""
        return self.targets.get((layer, name))

    def with_scale(self, user_scale: float) -> "LoraAdapter":
        """The same factors (shared, not copied) under another user scale, e.g. per NPC."""
        return LoraAdapter(self.name, self.rank, self.alpha, self.unit_scale,
                           check_user_scale(user_scale, self.name), self.targets)

    def delta(self, layer: int, name: str) -> np.ndarray | None:
        """scale * B @ A, the (rows, cols) change this adapter makes to one weight (for merging)."""
        f = self.factors(layer, name)
        return None if f is None else (self.scale * (f[1] @ f[0])).astype(np.float32)


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
