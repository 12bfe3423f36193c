"""The NumPy path's weight store: float32 (or float64) matrices dequantized once and cached,
the reference the compiled kernels (``packed_weights.py``) are checked against, and what runs
where numba is missing.
"""

from __future__ import annotations

import numpy as np

from . import quant
from .formats import ModelFile, TensorInfo

# Dequantized weights are cached in RAM while they fit this budget; beyond it, matmuls
# dequantize block-wise on the fly (bounded memory, slower).
DEFAULT_CACHE_BUDGET = 3 << 30


class CpuWeights:
    """Weight access for the NumPy forward: dequantized and cached while within budget,
    otherwise dequantized block-wise inside each matmul.

    Matrices that read the same input (a layer's wq, wk, wv; its w1, w3) can be fused: their rows
    are cached one after another in one block, so a single BLAS call reads them all. On this
    2-core machine that is ~20% less time than three small calls (memory streams better)."""

    def __init__(self, mf: ModelFile, dtype, cache_budget: int):
        self.mf, self.dtype = mf, dtype
        self.cache: dict[str, np.ndarray] = {}  # name -> (rows, cols) matrix, maybe a view of a block
        self.blocks: dict[tuple[str, ...], np.ndarray] = {}  # member names -> their stacked rows
        self.group_of: dict[str, tuple[TensorInfo, ...]] = {}
        self.budget_left = cache_budget

    def fuse(self, tensors: tuple[TensorInfo, ...]) -> None:
        """Cache these matrices (same column count) as one block of stacked rows."""
        assert len({t.shape[0] for t in tensors}) == 1, "fused matrices must share their input"
        for t in tensors:
            self.group_of[t.name] = tensors

    def vector(self, t: TensorInfo) -> np.ndarray:
        return quant.dequantize(self.mf.tensor_bytes(t.name), t.qtype, t.n_elements).astype(self.dtype)

    def matrix(self, t: TensorInfo) -> np.ndarray | None:
        """The (rows, cols) matrix if it is (or can be) cached, else None."""
        w = self.cache.get(t.name)
        if w is not None:
            return w
        group = self.group_of.get(t.name, (t,))
        block = self._block(group)
        if block is None:
            return None
        first = sum(member.shape[1] for member in group[:group.index(t)])
        cols, rows = t.shape
        w = block[first:first + rows]
        w[:] = self.vector(t).reshape(rows, cols)
        self.cache[t.name] = w
        return w

    def _block(self, group: tuple[TensorInfo, ...]) -> np.ndarray | None:
        key = tuple(t.name for t in group)
        block = self.blocks.get(key)
        if block is None:
            rows, cols = sum(t.shape[1] for t in group), group[0].shape[0]
            nbytes = rows * cols * np.dtype(self.dtype).itemsize
            if nbytes > self.budget_left:
                return None
            block = self.blocks[key] = np.empty((rows, cols), self.dtype)
            self.budget_left -= nbytes
        return block

    def matmul(self, x: np.ndarray, t: TensorInfo, start: int = 0, stop: int | None = None,
               rounded: bool = False) -> np.ndarray:
        """x @ W[start:stop].T: (T, cols) -> (T, stop - start); all rows by default. ``rounded`` is
        ignored: the reference keeps activations exact (PackedWeights takes it)."""
        cols, rows = t.shape
        stop = rows if stop is None else stop
        w = self.matrix(t)
        if w is not None:
            return x @ w[start:stop].T
        row = quant.row_nbytes(t.qtype, cols)
        raw = self.mf.tensor_bytes(t.name)[start * row:stop * row]
        return quant.matmul(x, raw, t.qtype, stop - start, cols)

    def matmul_fused(self, x: np.ndarray, tensors: tuple[TensorInfo, ...], rounded: bool = False) -> list[np.ndarray]:
        """[x @ W.T for W in tensors], as one product when they were fused and are cached."""
        cached = [self.matrix(t) for t in tensors]
        block = self.blocks.get(tuple(t.name for t in tensors))
        if block is None or any(w is None for w in cached):
            return [self.matmul(x, t) for t in tensors]
        out = x @ block.T
        outs, first = [], 0
        for t in tensors:
            outs.append(out[:, first:first + t.shape[1]])
            first += t.shape[1]
        return outs

    def rows(self, t: TensorInfo, ids: np.ndarray) -> np.ndarray:
        w = self.cache.get(t.name)
        if w is not None:
            return w[ids]
        cols, rows = t.shape
        raw = self.mf.tensor_bytes(t.name)  # ids were checked by the pass (cpu.py)
        return np.stack([quant.dequantize_rows(raw, t.qtype, rows, cols, int(i), int(i) + 1)[0]
                         for i in ids]).astype(self.dtype)
