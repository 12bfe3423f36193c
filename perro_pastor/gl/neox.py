"""NeoX-style RoPE on the gl backend, by reordering rows at upload.

Qwen and Phi rotate the pairs (x[i], x[i + rope_dim/2]) of each head; the gl rope kernel
(``rope.comp``) rotates adjacent pairs (x[2i], x[2i+1]), as Llama GGUFs are laid out. Reordering
the rows of wq and wk within each head to 0, h, 1, h+1, ... (h = rope_dim/2), and their biases
and q/k norm weights alike, makes the one rotation the other. Attention only takes dot products
of a query with keys, which the same reordering of both leaves unchanged, and v is not
reordered, so the layer's output is the same. The keys in the KV cache are in the reordered
layout; ``GlTransformer.export_kv`` / ``import_kv`` put them back, so a save moves between backends.
"""

from __future__ import annotations

import numpy as np

from ..config import Config


def head_order(head_size: int, rope_dim: int) -> np.ndarray:
    """Where each feature of a reordered head comes from: 0, h, 1, h+1, ..., then the
    features past rope_dim as they are."""
    half = rope_dim // 2
    paired = np.empty(rope_dim, dtype=np.int64)
    paired[0::2], paired[1::2] = np.arange(half), np.arange(half, rope_dim)
    return np.concatenate([paired, np.arange(rope_dim, head_size)])


def row_order(cfg: Config, name: str) -> np.ndarray | None:
    """The reordering of tensor ``name``'s rows (of a vector's elements), or None to keep it."""
    if not cfg.family.rope_neox:
        return None
    per_head = head_order(cfg.head_size, cfg.rope_dim)
    if name.endswith(("attn_q_norm.weight", "attn_k_norm.weight")):
        return per_head
    for part, heads in (("attn_q.", cfg.n_heads), ("attn_k.", cfg.n_kv_heads)):
        if part in name:
            return (np.arange(heads)[:, None] * cfg.head_size + per_head[None, :]).ravel()
    return None


def key_layout(cfg: Config) -> np.ndarray | None:
    """The feature order of a cached key head (None: the file's own)."""
    return head_order(cfg.head_size, cfg.rope_dim) if cfg.family.rope_neox else None
