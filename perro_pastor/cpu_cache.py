"""The cpu backend's KV cache: keys and values of every layer for one sequence, head-major so
each head's keys are one contiguous matrix (attention reads them with BLAS as they are)."""

from __future__ import annotations

import mmap

import numpy as np

from .config import Config


class KVCache:
    """(n_layers, n_kv_heads, n_ctx, head_size) keys and values."""

    def __init__(self, cfg: Config, n_ctx: int, dtype=np.float32):
        shape = (cfg.n_layers, cfg.n_kv_heads, n_ctx, cfg.head_size)
        self.key_cache = zeros_in_small_pages(shape, dtype)
        self.value_cache = zeros_in_small_pages(shape, dtype)
        self.n_ctx = n_ctx

    def export_rows(self, n_tokens: int) -> np.ndarray:
        """A copy of the first ``n_tokens`` rows: (2, n_layers, n_tokens, n_kv_heads, head_size),
        keys then values, in the cache's dtype. Sessions save, fork and share prompt prefixes
        through it without knowing how a backend stores its cache (``Transformer.export_kv``)."""
        if not 0 <= n_tokens <= self.n_ctx:
            raise ValueError(f"cannot export {n_tokens} KV rows from a context of {self.n_ctx}")
        keys_values = np.stack([self.key_cache[:, :, :n_tokens], self.value_cache[:, :, :n_tokens]])
        return np.ascontiguousarray(keys_values.transpose(0, 1, 3, 2, 4))

    def import_rows(self, array: np.ndarray) -> None:
        """Write rows 0..n-1 from an ``export_rows`` array (any float dtype, any backend)."""
        shape = self.key_cache.shape
        if array.ndim != 5 or array.shape[0] != 2 or array.shape[1] != shape[0] \
                or array.shape[2] > self.n_ctx or array.shape[3:] != (shape[1], shape[3]):
            raise ValueError(f"KV array of shape {array.shape} does not fit a cache of shape {shape}")
        n = array.shape[2]
        self.key_cache[:, :, :n] = array[0].transpose(0, 2, 1, 3)
        self.value_cache[:, :, :n] = array[1].transpose(0, 2, 1, 3)


def zeros_in_small_pages(shape: tuple, dtype) -> np.ndarray:
    """np.zeros in 4 KiB pages. NumPy asks Linux for 2 MiB huge pages on large arrays; a new KV
    cache is first written a few rows per layer and head, and each of those first writes then
    zeroed a whole 2 MiB page: restoring a 50-token persona into a fresh cache took 37-52 ms on
    the game's frame thread, 2 ms in small pages."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0 or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.zeros(shape, dtype)
    pages = mmap.mmap(-1, nbytes)  # anonymous: zero-filled, each page made on first touch
    pages.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(pages, dtype).reshape(shape)
