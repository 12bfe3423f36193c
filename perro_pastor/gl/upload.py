"""The gl backend's weights on the GPU, and the upload that puts them there a step at a time.

Matrices go up as the quant blocks they are in the file (maybe repacked, ``buffers``), prepared on
any thread (``prepare_matrix``: no GL) and written on the GL thread in chunks (``upload_steps``),
so ``loading.load_async`` can spread a model over frames. Norm weights and RoPE's frequencies go up
as f32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Iterator

import numpy as np

from ..backend import IDLE
from ..config import Config, rope_inv_freq
from ..formats import ModelFile, TensorInfo
from ..quant import dequantize
from ..weights import FAMILY_VECTORS, PROJECTIONS, Weights
from .buffers import GLWeight, PreparedWeight, f32_buffer, prepare_weight, upload_prepared_steps
from .context import GLContext
from .neox import row_order


@dataclass
class GlLayer:
    """One layer's weights on the GPU, by llama2.c name."""
    rms_att_weight: object  # (dim,) f32 buffer
    wq: GLWeight
    wk: GLWeight
    wv: GLWeight
    wo: GLWeight
    rms_ffn_weight: object
    w1: GLWeight
    w2: GLWeight
    w3: GLWeight
    # what other families add (config.Family), f32 buffers: q/k/v biases (qwen2), q/k norms (qwen3)
    bq: object = None
    bk: object = None
    bv: object = None
    q_norm: object = None
    k_norm: object = None
    rms_att_post: object = None  # (Gemma) norms of the attention and FFN outputs
    rms_ffn_post: object = None


@dataclass
class GlWeights:
    """Every weight of the model on the GPU: llama2.c's TransformerWeights, plus RoPE's table."""
    token_embedding_table: GLWeight
    wcls: GLWeight  # the same object as the embedding table when the classifier is tied
    layers: list[GlLayer]
    rms_final_weight: object  # (dim,) f32 buffer
    inv_freq: object  # (n_rot,) f32 buffer: the rotation frequency of each pair of a head's features
    n_rot: int
    inv_freq_local: object = None  # (Gemma) the sliding-window layers' frequencies (their own base)


def upload_order(weights: Weights) -> list[TensorInfo]:
    """The weight matrices the gl backend uploads, in upload order (a tied classifier once)."""
    order = [weights.token_embedding_table]
    if weights.wcls is not weights.token_embedding_table:
        order.append(weights.wcls)
    return order + [getattr(l, n) for l in weights.layers for n in PROJECTIONS]


def prepare_matrix(file: ModelFile, t: TensorInfo, max_ssbo_bytes: int, cfg: Config | None = None) -> PreparedWeight:
    """Host side of one matrix upload (validate + repack); no GL, so any thread may run it.
    With ``cfg`` of a NeoX-rope family, wq and wk rows are reordered (``neox.py``)."""
    cols, rows = t.shape
    raw = file.tensor_bytes(t.name)
    order = row_order(cfg, t.name) if cfg is not None else None
    if order is not None:  # every GGML row is its own run of bytes
        raw = np.ascontiguousarray(raw.reshape(rows, -1)[order]).reshape(-1)
    return prepare_weight(raw, t.qtype, rows, cols, max_ssbo_bytes, t.name)


def upload_steps(glctx: GLContext, file: ModelFile, cfg: Config, weights: Weights,
                 prepared: Iterator[PreparedWeight | None], made: list, chunk_bytes: int = 4 << 20,
                 on_bytes: Callable[[int], None] | None = None) -> Generator[None, None, GlWeights]:
    """Upload the model, yielding after every ``chunk_bytes`` written; returns its ``GlWeights``.

    ``prepared`` gives each matrix of ``upload_order(weights)`` in order, already laid out on
    the host (``prepare_matrix``), or None while the next one is not ready yet (this step
    then yields ``IDLE``). ``on_bytes(n)`` hears about every chunk written. Every GL object made
    is appended to ``made`` at once, so a cancelled upload leaves nothing unreleasable."""
    def vector(t: TensorInfo) -> np.ndarray:
        values = dequantize(file.tensor_bytes(t.name), t.qtype, t.n_elements).astype(np.float32)
        order = row_order(cfg, t.name)
        return values if order is None else values[order]

    def f32(data: np.ndarray):
        buf = f32_buffer(glctx, data)
        made.append(buf)
        return buf

    # matrices: quant blocks as they are in the file (maybe repacked)
    uploaded: dict[str, GLWeight] = {}
    for t in upload_order(weights):
        p = next(prepared)
        while p is None:
            yield IDLE  # the host side is not ready yet: nothing to do before the next tick
            p = next(prepared)
        steps = upload_prepared_steps(glctx, p, chunk_bytes, made=made, on_bytes=on_bytes)
        uploaded[t.name] = yield from steps
        del p, steps  # drop the host copy now: peak memory stays about one tensor

    # norms and rope as f32
    layers = []
    for l in weights.layers:  # a step per layer: two small buffers are ~1.5 ms on llvmpipe
        extra = {n: f32(vector(getattr(l, n))) for n in FAMILY_VECTORS if getattr(l, n) is not None}
        layers.append(GlLayer(rms_att_weight=f32(vector(l.rms_att_weight)),
                              rms_ffn_weight=f32(vector(l.rms_ffn_weight)),
                              **{n: uploaded[getattr(l, n).name] for n in PROJECTIONS}, **extra))
        yield
    freq_factors = vector(weights.rope_freqs) if weights.rope_freqs else None
    inv_freq = rope_inv_freq(cfg, freq_factors)
    local = f32(rope_inv_freq(cfg, local=True).astype(np.float32)) if cfg.family.swa_pattern else None
    return GlWeights(token_embedding_table=uploaded[weights.token_embedding_table.name],
                     wcls=uploaded[weights.wcls.name], layers=layers,
                     rms_final_weight=f32(vector(weights.rms_final_weight)),
                     inv_freq=f32(inv_freq.astype(np.float32)), n_rot=len(inv_freq), inv_freq_local=local)
