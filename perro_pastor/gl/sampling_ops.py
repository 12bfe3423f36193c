"""Launchers that turn logits into a token id on the GPU: argmax and the full sampler.

Part of ``Kernels`` (``gl/kernels.py``). The id is written into an int32 buffer (the same one the embedding
lookup reads), so a decode step never waits for the CPU; the host reads the id back later.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendError
from .dispatcher import Dispatcher, n_groups

ARGMAX_WG = 256
ARGMAX_CHUNK = ARGMAX_WG * 8  # logits per work group of argmax.comp's first pass (its CHUNK)


class SamplingOps:
    """The sampling launchers of one ``Kernels``."""

    def __init__(self, gpu: Dispatcher) -> None:
        self.gpu = gpu

    def argmax(self, tokens, logits, n: int, out_index: int = 0) -> None:
        """tokens[out_index] = argmax(logits[:n]) (lowest id on ties), two dispatches."""
        groups = n_groups(n, ARGMAX_CHUNK)
        partial = self.gpu.scratch("argmax_partial", groups * 8)
        self.gpu.bind(logits, 0)
        self.gpu.bind(partial, 1)
        self.gpu.bind(tokens, 2)
        self.gpu.run(self.gpu.program("argmax.comp", PASS=1, WG_SIZE=ARGMAX_WG, CHUNK=ARGMAX_CHUNK), groups, n=n)
        self.gpu.barrier()
        self.gpu.run(self.gpu.program("argmax.comp", PASS=2, WG_SIZE=ARGMAX_WG, CHUNK=ARGMAX_CHUNK), 1, n=groups,
                     out_index=out_index)
        self.gpu.barrier()

    def sample(self, tokens, logits, n: int, *, out_index: int, seed: int, step: int,
               temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
               repeat_penalty: float = 1.0, recent_begin: int = 0, recent_count: int = 0,
               logit_bias: tuple = ()) -> None:
        """tokens[out_index] = a token drawn from logits[:n] (settings as sampling.SamplerSettings).

        The penalty looks at ids tokens[recent_begin : recent_begin + recent_count] and is applied
        to ``logits`` in place. The draw uses a PCG hash of (seed, step): the same seed and step
        give the same token. temperature 0 is greedy. ``logit_bias``: (id, bias) pairs added
        first (as ``SamplerSettings.logit_bias``; +inf, a forced token, is the host's to handle).
        """
        if repeat_penalty <= 0 or temperature < 0 or not 0 < top_p <= 1 or not 0 <= min_p <= 1 or top_k < 0:
            raise BackendError(f"sample: bad settings temperature={temperature} top_k={top_k} top_p={top_p} "
                               f"min_p={min_p} repeat_penalty={repeat_penalty}")
        probs = self.gpu.scratch("sample_probs", n * 4)
        self.gpu.bind(logits, 0)
        self.gpu.bind(tokens, 1)
        self.gpu.bind(probs, 2)
        merged: dict[int, float] = {}
        for token, value in logit_bias:  # one pair per id: invocations add them in parallel
            merged[int(token)] = merged.get(int(token), 0.0) + float(value)
        pairs = np.zeros((max(1, len(merged)), 2), np.uint32)
        if merged:
            pairs[:, 0] = list(merged)
            pairs[:, 1] = np.array(list(merged.values()), np.float32).view(np.uint32)
        bias = self.gpu.scratch("sample_bias", max(4096, pairs.nbytes))  # (room to spare: growing it stales plans)
        bias.write(pairs.tobytes())
        self.gpu.bind(bias, 3)
        self.gpu.run(self.gpu.program("sample.comp"), 1, n=n, temperature=float(temperature), top_k=int(top_k),
                     top_p=float(top_p), min_p=float(min_p), penalty=float(repeat_penalty),
                     recent_begin=recent_begin, recent_count=recent_count, out_index=out_index,
                     seed=seed & 0xFFFFFFFF, step=step & 0xFFFFFFFF, n_bias=len(merged))
        self.gpu.barrier()
