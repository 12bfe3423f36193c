"""LoRA on the GPU: adapters' factors uploaded once (``LoraCache``), and the fusion of a lone
decode token's deltas into the kernels of its step (``LoraFusion``).

A decode step with an adapter would otherwise pay two mat-vec dispatches per adapted projection
(``Kernels.lora``). Fused, the kernel that makes a projection's input x (rmsnorm for q/k/v and
w1/w3, attention for wo, swiglu for w2) also computes A x, and the mat-vecs that read x add
B (A x) in their epilogue: no dispatch of its own (docs/lora.md).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from ..config import Config
from ..errors import BackendError
from .context import GLContext
from .dispatcher import Dispatcher, n_groups
from .layer_ops import RMSNORM_LORA_CHUNK, SWIGLU_LORA_CHUNK, lora_chunk
from .lora_factors import LORA_AX_UBO_BYTES, FusedLora, LoraA, LoraPair, a_rows_int8, lora_work, padded_rank
from .shader_loader import LORA_AX_WORDS


def lora_a_groups(dim: int, hidden_dim: int, n_heads: int) -> int:
    """The most work groups a kernel computing a LoRA A x uses for this model (rmsnorm over
    dim, attention one per head, swiglu over hidden_dim): each writes one part per row of A."""
    return max(n_groups(dim, lora_chunk(dim, RMSNORM_LORA_CHUNK)), n_heads,
               n_groups(hidden_dim, lora_chunk(hidden_dim, SWIGLU_LORA_CHUNK)))


# -----------------------------------------------------------------------------
# LoRA pairs, uploaded once per factor arrays

@dataclass
class StackedA:
    """``LoraCache.stacked_a``: A factors sharing an input, as one buffer of int8 rows."""
    rows_int8: object
    rows: int
    cols: int
    offsets: list[int]  # where each factor's rows (and its A x) start

    def release(self) -> None:
        self.rows_int8.release()


class LoraCache:
    """Uploaded ``LoraPair``s keyed by the identity of the adapter's A array.

    Adapters are frozen dataclasses holding a dict (unhashable) and ``with_scale`` copies share
    their factors, so the arrays, not the adapter objects, are the key. An entry holds a weak
    reference to A; pairs whose A was garbage-collected are released on the next lookup (on the
    GL thread, never from a finalizer)."""

    def __init__(self, glctx: GLContext):
        self.glctx = glctx
        self.pairs: dict[int, tuple[weakref.ref, LoraPair]] = {}
        self.stacks: dict[tuple, tuple[weakref.ref, StackedA]] = {}

    def pair(self, a: np.ndarray, b: np.ndarray, name: str) -> LoraPair:
        entry = self.pairs.get(id(a))
        if entry is not None and entry[0]() is a:
            return entry[1]
        self.purge()
        pair = LoraPair(self.glctx, np.asarray(a, np.float32), np.asarray(b, np.float32), name)
        self.pairs[id(a)] = (weakref.ref(a), pair)
        return pair

    def stacked_a(self, arrays: list[np.ndarray]) -> "StackedA":
        """The A factors of projections that share an input, each padded to a multiple of 8 rows
        (a ``LoraPair``'s padded rank) and stacked, as int8 rows with a scale each
        (``a_rows_int8``: the kernel that makes the input computes every A x from them,
        common/lora_a.glsl); cached like the pairs (weakly, by the first A; keyed by all of them).
        The rounding (half a step of 1/127 of a row's largest value) is far below what LoRA
        factors carry; the width must be a multiple of 16."""
        key = tuple(id(a) for a in arrays)
        entry = self.stacks.get(key)
        if entry is not None and entry[0]() is arrays[0]:
            return entry[1]
        self.purge()
        padded = [np.zeros((padded_rank(len(a)), a.shape[1]), np.float32) for a in arrays]
        for p, a in zip(padded, arrays):
            p[:len(a)] = a
        offsets = np.cumsum([0] + [len(p) for p in padded[:-1]]).tolist()
        stacked = np.concatenate(padded)
        rows, cols = stacked.shape
        if cols % 16:
            raise BackendError(f"stacked LoRA A: width {cols} is not a multiple of 16")
        upload = StackedA(self.glctx.ctx.buffer(a_rows_int8(stacked).tobytes()), rows, cols, offsets)
        self.stacks[key] = (weakref.ref(arrays[0]), upload)
        return upload

    def release(self) -> None:
        self._drop(dead_only=False)

    def purge(self) -> None:
        """Release the uploads whose first A factor is gone (its adapter was dropped)."""
        self._drop(dead_only=True)

    def _drop(self, dead_only: bool) -> None:
        for cache in (self.pairs, self.stacks):  # entries: (weakref to the first A, upload, ...)
            for key, entry in list(cache.items()):
                if not dead_only or entry[0]() is None:
                    entry[1].release()
                    del cache[key]


# -----------------------------------------------------------------------------
# fusion into a decode step

class LoraFusion:
    """Which LoRA deltas of a lone decode token are fused, per layer and projection group."""

    def __init__(self, cfg: Config, gpu: Dispatcher, lora: LoraCache) -> None:
        self.cfg, self.gpu, self.lora = cfg, gpu, lora
        self.groups = lora_a_groups(cfg.dim, cfg.hidden_dim, cfg.n_heads)
        self._fusions: dict[tuple, tuple] = {}  # fuse's answers, by layer, names and adapters

    def fuse(self, l: int, names: tuple[str, ...], spans: list) -> tuple[LoraA | None, dict]:
        """For a lone decode token (one segment, one token) with adapters: its first adapter's
        deltas on the projections in ``names`` (they share their input x), fused. Returns the
        ``LoraA`` for the kernel that makes x, which then also computes every A x (no dispatch
        of its own), and {name: (adapter, FusedLora)} for ``GlTransformer.project``, whose
        mat-vecs add B (A x) in their epilogue. Batches and any further adapters take the
        two-dispatch ``Kernels.lora`` in ``project``. (None, {}) when there is nothing to fuse."""
        if len(spans) != 1 or spans[0][2] != 1 or not spans[0][0].adapters:
            return None, {}
        # room for the parts of the most rows A x may have (the work buffer then never moves)
        work = lora_work(self.gpu, LORA_AX_WORDS * self.groups)
        return self._fusion(l, names, spans[0][0].adapters, work)

    def _fusion(self, l: int, names: tuple[str, ...], adapters: tuple, work) -> tuple[LoraA | None, dict]:
        """``fuse``'s answer, made once per layer, projection group, adapters and work buffer,
        then kept (a decode step asks 4 times per layer, and this is Python the LoRA step would
        pay every token). Entries hold the adapters weakly: a dropped adapter's entry is made
        again if its id returns."""
        key = (l, names, tuple(id(a) for a in adapters))
        entry = self._fusions.get(key)
        if entry is not None and entry[1] is work and all(ref() is a for ref, a in zip(entry[0], adapters)):
            return entry[2]
        for adapter in adapters:
            members = [(name, adapter.factors(l, name)) for name in names]
            members = [(name, f) for name, f in members if f is not None]
            if members:
                break
        else:
            members = []
        fusion = None, {}
        if members and self._can_fuse(names, sum(padded_rank(len(f[0])) for _, f in members)):
            stacked = self.lora.stacked_a([f[0] for _, f in members])
            fusion = (LoraA(stacked.rows_int8, stacked.rows, stacked.cols, work),
                      {name: (adapter, FusedLora(self.lora.pair(f[0], f[1], f"L{l}.{name}"), work, adapter.scale, off))
                       for (name, f), off in zip(members, stacked.offsets)})
        try:
            refs = [weakref.ref(a) for a in adapters]
        except TypeError:  # an adapter object without weak references: not kept
            return fusion
        # drop the entries of adapters that are gone (a miss is rare: once per layer and group)
        self._fusions = {k: v for k, v in self._fusions.items() if all(r() is not None for r in v[0])}
        self._fusions[key] = (refs, work, fusion)
        return fusion

    def _can_fuse(self, names: tuple[str, ...], rows: int) -> bool:
        """Whether the kernel that makes these projections' input can compute their A x
        (common/lora_a.glsl): rows of A, and each group's chunk (a head, for wo), in whole
        uvec4s of int8, and A x within the uniform block the mat-vecs read."""
        cfg = self.cfg
        width = cfg.hidden_dim if names == ("w2",) else cfg.dim
        aligned = width % 16 == 0 and (names != ("wo",) or cfg.head_size % 16 == 0)
        return aligned and rows * 4 <= LORA_AX_UBO_BYTES
