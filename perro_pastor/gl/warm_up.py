"""The gl backend's warm-up: every program compiled before the first real token.

llvmpipe JIT-compiles a program on its first dispatch (seconds for the mat-mat, cold), so a game
that skipped this would freeze on its first reply. ``GlTransformer.warm_up_steps`` (and through it
``loading.load_async``) runs this a step at a time.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import numpy as np

from ..backend import SampleRequest, Segment
from ..sampling import SamplerSettings
from ..weights import PROJECTIONS
from .lora_factors import LoraPair

WARM_UP_DRAW = SampleRequest(SamplerSettings(repeat_penalty=1.1, logit_bias={0: -1.0}), seed=0, recent=(0,))


class _ZeroAdapter:
    """Zero rank-8 LoRA factors for every projection (shaped like ``layer``'s), so the warm-up
    compiles the fused LoRA mat-vec of each weight type before a real adapter needs it."""
    scale = 0.0

    def __init__(self, layer):
        self._factors = {name: (np.zeros((8, getattr(layer, name).cols), np.float32),
                                np.zeros((getattr(layer, name).rows, 8), np.float32)) for name in PROJECTIONS}

    def factors(self, l: int, name: str):
        return self._factors.get(name)


def warm_up_steps(tr) -> Iterator[None]:
    """Run every program of ``tr`` (a GlTransformer) once. Batches of two and of five tokens
    with every logit reach the mat-mat's two token tiles (few NPCs decoding together, and
    prefill; the classifier's too), one token the decode programs (matvec) and the GPU argmax,
    a zero LoRA delta both of its sizes and fused into a decode step. Everything runs twice:
    first dry (the launchers create each program, GLSL compile and link, but dispatch nothing),
    then for real (the first dispatch of each program is llvmpipe's JIT, or a load from its
    shader cache). Yields after every dispatch, so a loader pays one compile or one JIT per step.

    Only one layer of each kind (same quant types) runs: programs depend on the types, not on
    the layer, so the other layers would only repeat compiled dispatches (a 30-layer model
    warms up in ~1/20 of the dispatches)."""
    all_weights, kinds = tr.weights, {}
    for layer in all_weights.layers:
        kind = tuple(tuple(sorted(getattr(layer, n).defines.items())) for n in PROJECTIONS)
        kinds.setdefault(kind, layer)
    kv = tr.new_cache(8)
    zeros = np.zeros((1, tr.cfg.dim), np.float32)
    pair = LoraPair(tr.glctx, zeros, zeros.T.copy(), "warm-up")
    tr.weights = replace(all_weights, layers=list(kinds.values()))
    try:
        for dry_run in (True, False):
            tr.kernels.gpu.dry_run = dry_run
            yield from tr.forward_steps([Segment(np.zeros(2, np.int64), 0, kv)], all_logits=True)
            yield from tr.forward_steps([Segment(np.zeros(5, np.int64), 2, kv)], all_logits=True)
            yield from tr.greedy_steps(Segment(np.zeros(1, np.int64), 7, kv))
            if tr.gpu_sampling:  # a session's token drawn on the GPU (sample.comp)
                yield from tr.forward_steps([Segment(np.zeros(1, np.int64), 7, kv, sample=WARM_UP_DRAW)])
            zero_adapter = _ZeroAdapter(tr.weights.layers[0])  # the fused LoRA mat-vecs (decode)
            yield from tr.greedy_steps(Segment(np.zeros(1, np.int64), 7, kv, (zero_adapter,)))
            yield
            for n_tokens in (1, 2):
                tr.kernels.lora(tr.s.xb, pair, tr.s.x, 0.0, n_tokens=n_tokens)
                yield
    finally:
        tr.kernels.gpu.dry_run = False
        tr.weights = all_weights
        kv.release()
        pair.release()
    tr.glctx.check_error("warming up the gl backend")

