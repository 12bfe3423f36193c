"""NeoX-style RoPE on the gl backend, by reordering rows at upload.

Qwen and Phi rotate the pairs (x[i], x[i + rope_dim/2]) of each head; the gl rope kernel
(``rope.comp``) rotates adjacent pairs (x[2i], x[2i+1]), as Llama GGUFs are laid out. Reordering
the rows of wq and wk within each head to 0, h, 1, h+1, ... (h = rope_dim/2), and their biases
and q/k norm weights alike, makes the one rotation the other. Attention only takes dot products
of a query with keys, which the same reordering of both leaves unchanged, and v is not
reordered, so the layer's output is the same. The keys in the KV cache are in the reordered
layout; ``GlTransformer.export_kv`` / ``import_kv`` put them back, so a save moves between backends.
A LoRA on wq or wk changes those rows too: ``LoraViews`` gives the gl pass each adapter with its
B rows of wq and wk reordered alike.
"""

from __future__ import annotations

import weakref

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


def keys_in_file_order(rows: np.ndarray, cfg: Config) -> np.ndarray:
    """Exported cache rows (2, n_layers, n, n_kv_heads, head_size), keys back in the file's
    feature order (in place)."""
    layout = key_layout(cfg)
    if layout is not None:
        rows[0][..., layout] = rows[0].copy()
    return rows


def keys_in_cache_order(array: np.ndarray, cfg: Config) -> np.ndarray:
    """The inverse of ``keys_in_file_order``, on a copy (not the caller's array)."""
    layout = key_layout(cfg)
    if layout is not None and array.ndim == 5:
        array = np.array(array)
        array[0] = array[0][..., layout]
    return array


class LoraViews:
    """Each LoRA adapter as the gl pass must see it on a NeoX-rope model: B of wq and wk with
    their rows reordered like the weights. One view per adapter, kept while the adapter lives,
    so the factors' GPU uploads (cached per array) are reused from token to token."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._views: dict[int, tuple[weakref.ref, _Reordered]] = {}

    def __call__(self, adapters: tuple) -> tuple:
        return tuple(self._view(a) for a in adapters)

    def _view(self, adapter) -> "_Reordered":
        entry = self._views.get(id(adapter))
        if entry is not None and entry[0]() is adapter:
            return entry[1]
        view = _Reordered(adapter, self.cfg)
        self._views = {k: v for k, v in self._views.items() if v[0]() is not None}  # drop the dead
        self._views[id(adapter)] = (weakref.ref(adapter), view)
        return view


class _Reordered:
    """An adapter whose wq/wk B rows come reordered (computed once each); the rest as it is."""

    def __init__(self, adapter, cfg: Config) -> None:
        self._adapter, self._cfg = adapter, cfg
        self._b: dict[tuple[int, str], tuple] = {}

    def factors(self, layer: int, name: str):
        f = self._adapter.factors(layer, name)
        if f is None or name not in ("wq", "wk"):
            return f
        if (layer, name) not in self._b:
            a, b = f
            order = row_order(self._cfg, f"blk.{layer}.attn_{name[1]}.weight")
            self._b[(layer, name)] = (a, np.ascontiguousarray(b[order]))
        return self._b[(layer, name)]

    def __getattr__(self, name: str):
        return getattr(self._adapter, name)  # scale, name, rank, ...
