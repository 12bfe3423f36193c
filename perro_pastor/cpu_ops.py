"""The cpu backend's ops in NumPy: each the twin of a shader of the same name in ``shaders/``
(and of a compiled kernel in ``cpu_kernels.py``), plus what other families add (NeoX rope, GeGLU,
soft-capping). ``cpu.py`` narrates the forward pass with them.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from . import quant

# -----------------------------------------------------------------------------
# ops (each the NumPy twin of shaders/<op>.comp)

def embedding(w_raw: np.ndarray, qtype: quant.GGMLType, vocab: int, dim: int,
              token_ids: np.ndarray) -> np.ndarray:
    """Rows of the token embedding table for ``token_ids``: (T,) -> (T, dim) float32."""
    row = quant.row_nbytes(qtype, dim)
    for t in token_ids:
        if not 0 <= t < vocab:
            raise ValueError(f"token id {t} is outside the vocabulary (0..{vocab - 1})")
    return np.stack([quant.dequantize(w_raw[int(t) * row:(int(t) + 1) * row], qtype, dim)
                     for t in token_ids])


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    mean_square = np.einsum("...i,...i->...", x, x)[..., None] / x.shape[-1]
    return x / np.sqrt(mean_square + eps) * weight


def rope_rotation(positions: np.ndarray, inv_freq: np.ndarray, dtype) -> np.ndarray:
    """exp(i * pos * inv_freq[j]) as complex numbers, (T, rope_dim // 2): what ``apply_rope``
    multiplies each (x[2j], x[2j+1]) pair by. One forward pass computes it once for all layers."""
    angle = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    complex_dtype = np.result_type(np.dtype(dtype), np.complex64)
    return np.exp(1j * angle).astype(complex_dtype)


def apply_rope(x: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of each head: read as the complex number
    x[2i] + i x[2i+1], the pair is multiplied by ``rotation[t, i]``.

    x: (T, n_heads, head_size); rotation: (T, rope_dim // 2) from ``rope_rotation``. Dimensions
    past rope_dim pass through unrotated."""
    out = x.copy()
    pairs = out[..., :2 * rotation.shape[1]].view(rotation.dtype)  # (T, n_heads, rope_dim // 2)
    pairs *= rotation[:, None, :]
    return out


def apply_rope_neox(x: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """RoPE in GPT-NeoX's layout (Qwen, Gemma, Phi): the pair rotated together is
    (x[i], x[i + rope_dim/2]) of each head, read as the complex number x[i] + i x[i + rope_dim/2]."""
    half = rotation.shape[1]
    out = x.copy()
    turned = (x[..., :half] + 1j * x[..., half:2 * half]) * rotation[:, None, :]
    out[..., :half], out[..., half:2 * half] = turned.real, turned.imag
    return out


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """RoPE for x: (T, n_heads, head_size) at ``positions`` (T,): ``apply_rope`` with the
    rotation of those positions."""
    return apply_rope(x, rope_rotation(positions, inv_freq, x.dtype))


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos0: int,
              sliding_window: int = 0, softcap_at: float = 0.0) -> np.ndarray:
    """Causal multi-head attention with grouped key/value heads.

    q: (T, n_heads, hs) for positions pos0..pos0+T-1; k_cache, v_cache: (n_kv_heads, >= pos0+T, hs),
    head-major so each head's keys are one contiguous matrix (BLAS reads it as it is).
    Query head h reads key/value head h // (n_heads // n_kv_heads). Returns (T, n_heads, hs)."""
    T, n_heads, hs = q.shape
    n_kv_heads = k_cache.shape[0]
    group = n_heads // n_kv_heads
    S = pos0 + T
    k = k_cache[:, :S].astype(q.dtype, copy=False)
    v = v_cache[:, :S].astype(q.dtype, copy=False)

    # (n_kv_heads, T*group, hs) @ (n_kv_heads, hs, S): every query row against every cached key
    qg = q.reshape(T, n_kv_heads, group, hs).transpose(1, 0, 2, 3).reshape(n_kv_heads, T * group, hs)
    scores = (qg * (1 / math.sqrt(hs))) @ k.transpose(0, 2, 1)  # a Python float keeps f32 in f32
    if softcap_at:  # (gemma2: scores squashed into (-c, c) before the mask)
        scores = softcap(scores, softcap_at)

    # a query at position p sees keys j <= p (and, with a sliding window, p - j < window); a
    # lone query at the end of the cache sees every key unless the window cuts some off
    if T > 1 or (sliding_window and S > sliding_window):
        query_pos = pos0 + np.arange(T)[:, None]
        key_pos = np.arange(S)[None, :]
        visible = key_pos <= query_pos
        if sliding_window:
            visible &= query_pos - key_pos < sliding_window
        scores = np.where(np.repeat(visible, group, axis=0)[None], scores, -np.inf)

    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores, out=scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = probs @ v  # (n_kv_heads, T*group, hs)
    return out.reshape(n_kv_heads, T, group, hs).transpose(1, 0, 2, 3).reshape(T, n_heads, hs)


def swiglu(h1: np.ndarray, h3: np.ndarray) -> np.ndarray:
    """SiLU-gated linear unit: silu(h1) * h3, with silu(x) = x * sigmoid(x)."""
    return h1 / (1 + np.exp(-h1)) * h3


def geglu(h1: np.ndarray, h3: np.ndarray) -> np.ndarray:
    """GELU-gated linear unit (Gemma): gelu(h1) * h3, GELU in its tanh approximation."""
    return 0.5 * h1 * (1 + np.tanh(math.sqrt(2 / math.pi) * (h1 + 0.044715 * h1 * h1 * h1))) * h3


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap): values squashed smoothly into (-cap, cap) (Gemma 2's logits)."""
    return cap * np.tanh(x / cap)


NUMPY_OPS = SimpleNamespace(rmsnorm=rmsnorm, apply_rope=apply_rope, attention=attention, swiglu=swiglu)
