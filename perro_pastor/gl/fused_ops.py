"""The fused decode mat-vec (``shaders/matvec_fused.comp``): a decode token's projections with the
pre-norm, the q/k/v stacking, the SwiGLU gate and the residual add inside one dispatch each.

A decode step through these is 6 dispatches per layer instead of 12 (``gl/forward.py`` says which
ones). Part of ``Kernels`` (``gl/kernels.py``); the forward pass uses it where ``fits`` says the
weights allow (one buffer part each, the same type for stacked weights, x in shared memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from .. import cpu_ops
from ..errors import BackendError
from .buffers import GLWeight
from .dispatcher import Dispatcher, n_groups

FUSED_WG = 64
FUSED_ROWS = 2  # rows per work group: 32 invocations (a GPU's SIMD width) share a row
RESERVED_SHARED_BYTES = 2 * 4 * FUSED_WG  # the two reduction arrays beside x


@dataclass
class FusedLaunch:
    """One fused mat-vec resolved: its program, bindings and tiles (made once per argument set,
    replayed each token: resolving costs more Python than replaying)."""
    keep: tuple  # the buffers the key names by id, so no other object takes their ids
    prog: object
    binds: list
    uniforms: dict
    n_tiles: int


class FusedOps:
    """The fused mat-vec launcher of one ``Kernels``."""

    def __init__(self, gpu: Dispatcher, max_weights_per_dispatch: int) -> None:
        self.gpu = gpu
        self.max_weights_per_dispatch = max_weights_per_dispatch
        self.shared_bytes = gpu.glctx.limits.max_shared_memory or 32768
        # each argument set's resolved launch (a pass that is not replayed from a decode plan
        # asks again each token)
        self._launches: dict[tuple, FusedLaunch] = {}

    def release(self) -> None:
        self._launches.clear()

    def fits(self, *weights: GLWeight | None, gate: bool = False) -> bool:
        """Whether ``weights`` can share one fused dispatch: each in one buffer part, one type and
        width, rows stacking on whole tiles (``gate``: the same rows), x (cols floats) in shared
        memory."""
        if any(w is None or len(w.parts) != 1 for w in weights):
            return False
        first = weights[0]
        cols_fit = first.cols % 8 == 0 and first.cols * 4 + RESERVED_SHARED_BYTES <= self.shared_bytes
        same = all(w.defines == first.defines and w.cols == first.cols for w in weights)
        if gate:
            return cols_fit and same and all(w.rows == first.rows for w in weights)
        return cols_fit and same and all(w.rows % FUSED_ROWS == 0 for w in weights[:-1])

    def tile_slices(self, weights: tuple[GLWeight, ...]) -> list[tuple[int, int]]:
        """Tiles (first, end) per dispatch: all in one on a GPU (up to the driver's work-group
        count limit); slices of at most ``max_weights_per_dispatch`` on a CPU rasterizer (a
        dispatch's length is a frame's)."""
        gate = len(weights) == 2  # (both read with the same rows)
        rows = weights[0].rows if gate else sum(w.rows for w in weights)
        n_tiles = n_groups(rows, FUSED_ROWS)
        if self.gpu.software:  # (a CPU rasterizer: a dispatch's length is what a frame pays)
            step = max(1, self.max_weights_per_dispatch // (weights[0].cols * FUSED_ROWS * (2 if gate else 1)))
        else:  # a GPU runs it asynchronously: one dispatch, up to the work-group count limit
            step = n_tiles
        step = min(step, self.gpu.glctx.limits.max_group_count[0])  # (65535 on some drivers; a 256k vocab is 128k tiles)
        return [(a, min(n_tiles, a + step)) for a in range(0, n_tiles, step)]

    def matvec(self, dsts: tuple, weights: tuple[GLWeight, ...], x, norm=None, eps: float = 0.0,
               accumulate: bool = False, gate: bool = False, gelu: bool = False,
               tiles: tuple[int, int] | None = None) -> None:
        """dst_w (+)= W_w rmsnorm(x) for a decode token (``matvec_fused.comp``'s header).

        ``weights``: one, or three stacked (wq, wk, wv; ``dsts`` one buffer each), or two with
        ``gate`` (w1, w3; one dst: act(w1 x) * (w3 x)). ``norm``: the pre-norm's weight buffer,
        or None for x as it is. ``tiles``: one of ``tile_slices`` (default: all)."""
        key = (tuple(id(d) for d in dsts), tuple(id(w) for w in weights), id(x), id(norm), eps,
               accumulate, gate, gelu)
        launch = self._launches.get(key)
        if launch is None:
            launch = self._resolve(dsts, weights, x, norm, eps, accumulate, gate, gelu)
            self._launches[key] = launch
        for bind in launch.binds:
            self.gpu.call(bind)
        a, b = tiles or (0, launch.n_tiles)
        self.gpu.run(launch.prog, b - a, tile0=a, **launch.uniforms)
        self.gpu.barrier()

    def _resolve(self, dsts, weights, x, norm, eps, accumulate, gate, gelu) -> FusedLaunch:
        n_w = len(weights)
        if n_w not in (1, 2, 3) or (n_w == 2) != gate or len(dsts) != (1 if gate else n_w):
            raise BackendError(f"fused matvec: {n_w} weights and {len(dsts)} outputs (gate={gate}) do not go together")
        if not self.fits(*weights, gate=gate):
            raise BackendError(f"fused matvec: {[w.name for w in weights]} cannot share a dispatch (fits() is False)")
        cols = weights[0].cols
        defines = dict(weights[0].defines, WG_SIZE=FUSED_WG, ROWS=FUSED_ROWS, XS_VEC4S=cols // 4, N_W=n_w,
                       NORM=int(norm is not None), GATE=int(gate), GELU=int(gelu))
        prog = self.gpu.program("matvec_fused.comp", **defines)
        binds = [partial(w.parts[0].buffer.bind_to_storage_buffer, i) for i, w in enumerate(weights)]
        binds.append(partial(x.bind_to_storage_buffer, 3))
        if norm is not None:
            binds.append(partial(norm.bind_to_storage_buffer, 4))
        binds += [partial(d.bind_to_storage_buffer, 5 + i) for i, d in enumerate(dsts)]
        rows = [w.rows for w in weights]
        rows_total = rows[0] if gate else sum(rows)
        uniforms = dict(rows0=rows[0], rows1=rows[1] if n_w > 1 else 0, rows_total=rows_total, cols=cols,
                        eps=float(eps), accumulate=int(accumulate))
        uniforms = {k: v for k, v in uniforms.items() if prog.get(k, None) is not None}  # those compiled in
        return FusedLaunch((dsts, weights, x, norm), prog, binds, uniforms, n_groups(rows_total, FUSED_ROWS))


def fused_matvec_reference(ws: list[np.ndarray], x: np.ndarray, norm: np.ndarray | None = None, eps: float = 0.0,
                           gate: bool = False, gelu: bool = False) -> list[np.ndarray]:
    """NumPy twin of ``matvec_fused.comp`` (before any accumulate): the composition of the cpu ops
    it fuses. ``ws``: dequantized (rows, cols) weights; returns one output per dst."""
    xn = cpu_ops.rmsnorm(x, norm, eps) if norm is not None else x
    outs = [w @ xn for w in ws]
    if gate:
        return [(cpu_ops.geglu if gelu else cpu_ops.swiglu)(outs[0], outs[1])]
    return outs

