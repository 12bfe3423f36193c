"""The one frozen ``Config``: every hyperparameter of a model, read from file metadata in one
place. Nothing here is hard-coded per model: rope base, epsilon, head counts and context length all
come from the file, and inconsistent values are refused before any memory is sized from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelFormatError



@dataclass(frozen=True)
class Family:
    """What an architecture changes in the Llama layer; each flag is a line of the forward pass
    (cpu.py) and, for the tensors it needs, a row of the weight table (weights.py)."""
    rope_neox: bool = False  # rotate the pairs (x[i], x[i + rope_dim/2]) of a head, not adjacent ones
    qkv_bias: bool = False  # q, k and v projections add a bias (qwen2)
    qk_norm: bool = False  # RMSNorm over each head of q and of k before rope (qwen3, gemma3)
    post_norms: bool = False  # RMSNorm on the attention and FFN outputs before each residual add (gemma)
    gelu: bool = False  # GeGLU (tanh-approximate GELU) instead of SwiGLU (gemma)
    embed_scale: bool = False  # embeddings multiplied by sqrt(dim) (gemma)
    swa_pattern: int = 0  # every n-th layer attends globally, the others through the sliding window (gemma)
    fused: bool = False  # q/k/v stored as one matrix, gate and up as one (phi3; split by weights.py)
    # defaults where a file lacks the key (llama.cpp's, per family)
    attn_softcap: float = 0.0  # attention scores -> c * tanh(scores / c) (gemma2: 50)
    final_softcap: float = 0.0  # logits -> c * tanh(logits / c) (gemma2: 30)
    window: int = 0  # sliding window of the local layers (gemma2: 4096)
    local_rope_base: float = 0.0  # rope base of the local layers; 0: the global one (gemma3: 10000)

    @property
    def plain(self) -> bool:
        """The Llama layer as it is (what the compiled one-call cpu decode layer implements)."""
        return self == Family()


FAMILIES = {
    "llama": Family(),
    "mistral": Family(),
    "qwen2": Family(rope_neox=True, qkv_bias=True),
    "qwen3": Family(rope_neox=True, qk_norm=True),
    "phi3": Family(rope_neox=True, fused=True),
    "gemma2": Family(rope_neox=True, post_norms=True, gelu=True, embed_scale=True, swa_pattern=2,
                     attn_softcap=50.0, final_softcap=30.0, window=4096),
    "gemma3": Family(rope_neox=True, qk_norm=True, post_norms=True, gelu=True, embed_scale=True, swa_pattern=6,
                     local_rope_base=10000.0),
}
SUPPORTED_ARCHITECTURES = tuple(FAMILIES)

# Sanity bounds: far above any real Llama-family model, far below what would overflow or exhaust
# memory when sizing buffers from them (RELIABILITY.md row 18).
MAX_LAYERS = 1024
MAX_DIM = 1 << 16
MAX_HEADS = 1024
MAX_VOCAB = 1 << 20
MAX_CONTEXT = 1 << 24


@dataclass(frozen=True)
class Config:
    arch: str
    dim: int  # transformer width (residual stream size)
    hidden_dim: int  # FFN inner size
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (GQA when fewer than n_heads)
    vocab_size: int
    seq_len: int  # context length the model was trained for
    rms_eps: float
    rope_base: float
    rope_dim: int  # leading part of each head that is rotated (usually head_size)
    rope_scaling: str = "none"  # none | linear | llama3
    rope_scale_factor: float = 1.0
    rope_orig_ctx: int = 0  # llama3: original context length
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    sliding_window: int = 0  # 0 = full attention (Mistral sets a window)
    head_dim: int = 0  # per-head width when the file gives one (gemma3: 256 for a 640-wide model)
    family: Family = Family()
    rope_base_local: float = 10000.0  # rope base of the sliding-window layers (swa_pattern)
    final_softcap: float = 0.0  # logits -> c * tanh(logits / c) when set (gemma2)
    attn_softcap: float = 0.0  # attention scores -> c * tanh(scores / c) when set (gemma2)
    query_scale: float = 1.0  # scores times this beyond 1/sqrt(head_size): Phi-3 LongRoPE's attention
    #                           factor (squared: llama.cpp scales q and k), Gemma 27B's query scaling

    @property
    def head_size(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def q_dim(self) -> int:
        """Width of the queries (and of the attention output): dim for Llama, not for gemma3."""
        return self.n_heads * self.head_size

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    def is_local(self, layer: int) -> bool:
        """Whether ``layer`` attends through the sliding window with the local rope base."""
        n = self.family.swa_pattern
        return bool(n) and layer % n < n - 1

    def layer_window(self, layer: int) -> int:
        """The sliding window of ``layer`` (0: full attention)."""
        if self.family.swa_pattern:
            return self.sliding_window if self.is_local(layer) else 0
        return self.sliding_window

    @property
    def kv_mul(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_metadata(cls, md: dict[str, Any], where: str = "model") -> "Config":
        arch = md.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelFormatError(
                f"{where}: unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )

        def get(key: str, kind: type, default: Any = None) -> Any:
            full = f"{arch}.{key}"
            value = md.get(full, default)
            if value is None:
                raise ModelFormatError(f"{where}: missing metadata key {full}")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ModelFormatError(f"{where}: {full} must be an integer, got {value!r}")
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ModelFormatError(f"{where}: {full} must be a finite number, got {value!r}")
                value = float(value)
            return value

        family = FAMILIES[arch]

        def softcap(key: str, default: float) -> float:
            value = get(key, float, default)
            if value < 0:
                raise ModelFormatError(f"{where}: {arch}.{key} must be >= 0, got {value}")
            return value

        def query_scale() -> float:
            attn_factor = get("rope.scaling.attn_factor", float, 1.0)  # (LongRoPE: q and k times it)
            if not 0 < attn_factor < 100:
                raise ModelFormatError(f"{where}: {arch}.rope.scaling.attn_factor must be in (0, 100), got {attn_factor}")
            scale = attn_factor * attn_factor
            if arch in ("gemma2", "gemma3") and md.get(f"{arch}.block_count") in (46, 62):
                scale *= math.sqrt(head_size / (dim / n_heads))  # the 27B models: 1/sqrt(dim/n_heads)
            return scale

        def bounded(key: str, value: int, low: int, high: int) -> int:
            if not low <= value <= high:
                raise ModelFormatError(f"{where}: {arch}.{key} = {value} is outside [{low}, {high}]")
            return value

        dim = bounded("embedding_length", get("embedding_length", int), 1, MAX_DIM)
        n_heads = bounded("attention.head_count", get("attention.head_count", int), 1, MAX_HEADS)
        n_kv_heads = bounded(
            "attention.head_count_kv", get("attention.head_count_kv", int, n_heads), 1, n_heads
        )
        head_dim = get("attention.key_length", int, 0)
        if head_dim:
            bounded("attention.key_length", head_dim, 2, MAX_DIM)
            value_dim = get("attention.value_length", int, head_dim)
            if value_dim != head_dim:
                raise ModelFormatError(f"{where}: attention.value_length {value_dim} differs from "
                                       f"key_length {head_dim} (not supported)")
            if head_dim * n_heads == dim:
                head_dim = 0  # the usual split: nothing to remember
        elif dim % n_heads:
            raise ModelFormatError(
                f"{where}: embedding_length {dim} is not divisible by head_count {n_heads}"
            )
        if n_heads % n_kv_heads:
            raise ModelFormatError(
                f"{where}: head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}"
            )
        head_size = head_dim or dim // n_heads
        if head_size % 2:
            raise ModelFormatError(f"{where}: head size {head_size} is odd; rope needs pairs")
        vocab = get("vocab_size", int, len(md.get("tokenizer.ggml.tokens") or ()))
        rope_dim = get("rope.dimension_count", int, head_size)
        if not (2 <= rope_dim <= head_size and rope_dim % 2 == 0):
            raise ModelFormatError(f"{where}: rope.dimension_count {rope_dim} does not fit head size {head_size}")

        rope_base = get("rope.freq_base", float, 10000.0)
        scaling = md.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", "linear", "llama3"):
            raise ModelFormatError(f"{where}: unsupported rope scaling type {scaling!r}")
        factor = get("rope.scaling.factor", float, 1.0)
        if factor <= 0:
            raise ModelFormatError(f"{where}: rope.scaling.factor must be positive, got {factor}")
        if scaling == "linear" and factor == 1.0:
            scaling = "none"

        return cls(
            arch=arch,
            dim=dim,
            hidden_dim=bounded("feed_forward_length", get("feed_forward_length", int), 1, 16 * MAX_DIM),
            n_layers=bounded("block_count", get("block_count", int), 1, MAX_LAYERS),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=bounded("vocab_size", vocab, 1, MAX_VOCAB),
            seq_len=bounded("context_length", get("context_length", int, 2048), 1, MAX_CONTEXT),
            rms_eps=get("attention.layer_norm_rms_epsilon", float, 1e-5),
            rope_base=rope_base,
            rope_dim=rope_dim,
            rope_scaling=scaling,
            rope_scale_factor=factor,
            rope_orig_ctx=get("rope.scaling.original_context_length", int, 8192),
            sliding_window=bounded("attention.sliding_window", get("attention.sliding_window", int, family.window),
                                   0, MAX_CONTEXT),
            head_dim=head_dim,
            family=family,
            rope_base_local=get("rope.freq_base_swa", float, family.local_rope_base or rope_base),
            final_softcap=softcap("final_logit_softcapping", family.final_softcap),
            attn_softcap=softcap("attn_logit_softcapping", family.attn_softcap),
            query_scale=query_scale(),
        )


def rope_inv_freq(cfg: Config, freq_factors: np.ndarray | None = None, local: bool = False) -> np.ndarray:
    """Inverse rotation frequency of each rotated pair, (rope_dim // 2,) float64.

    ``freq_factors`` is the per-pair divisor a GGUF stores as ``rope_freqs.weight`` for Llama 3.x
    ("llama3" scaling baked in at conversion); without it, llama3 scaling is computed from metadata.
    ``local``: the sliding-window layers' base (gemma3), unscaled.
    """
    pair = np.arange(0, cfg.rope_dim, 2, dtype=np.float64)
    if local:
        return cfg.rope_base_local ** (-pair / cfg.rope_dim)
    inv_freq = cfg.rope_base ** (-pair / cfg.rope_dim)
    if freq_factors is not None:
        return inv_freq / np.asarray(freq_factors, dtype=np.float64)
    if cfg.rope_scaling == "linear":
        return inv_freq / cfg.rope_scale_factor
    if cfg.rope_scaling == "llama3":
        # Long wavelengths are slowed by the factor, short ones kept, the band between blended.
        low_wavelen = cfg.rope_orig_ctx / cfg.rope_low_freq_factor
        high_wavelen = cfg.rope_orig_ctx / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = (cfg.rope_orig_ctx / wavelen - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
        )
        blended = (1 - smooth) * inv_freq / cfg.rope_scale_factor + smooth * inv_freq
        return np.where(
            wavelen < high_wavelen, inv_freq,
            np.where(wavelen > low_wavelen, inv_freq / cfg.rope_scale_factor, blended),
        )
    return inv_freq
