"""Launchers that turn logits into a token id on the GPU: argmax and the full sampler.

A mixin of ``Kernels``. The id is written into an int32 buffer (the same one the embedding
lookup reads), so a decode step never waits for the CPU; the host reads the id back later.
"""

from __future__ import annotations

from ..errors import BackendError

ARGMAX_WG = 256
ARGMAX_CHUNK = ARGMAX_WG * 8  # must match CHUNK in argmax.comp


class SamplingOps:
    def argmax(self, tokens, logits, n: int, out_index: int = 0) -> None:
        """tokens[out_index] = argmax(logits[:n]) (lowest id on ties), two dispatches."""
        n_groups = (n + ARGMAX_CHUNK - 1) // ARGMAX_CHUNK
        partial = self.scratch("argmax_partial", n_groups * 8)
        logits.bind_to_storage_buffer(0)
        partial.bind_to_storage_buffer(1)
        tokens.bind_to_storage_buffer(2)
        self._run(self.program("argmax.comp", PASS=1), n_groups, n=n)
        self.barrier()
        self._run(self.program("argmax.comp", PASS=2), 1, n=n_groups, out_index=out_index)
        self.barrier()

    def sample(self, tokens, logits, n: int, *, out_index: int, seed: int, step: int,
               temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
               repeat_penalty: float = 1.0, recent_begin: int = 0, recent_count: int = 0) -> None:
        """tokens[out_index] = a token drawn from logits[:n] (settings as sampling.SamplerSettings).

        The penalty looks at ids tokens[recent_begin : recent_begin + recent_count] and is applied
        to ``logits`` in place. The draw uses a PCG hash of (seed, step): the same seed and step
        give the same token. temperature 0 is greedy.
        """
        if repeat_penalty <= 0 or temperature < 0 or not 0 < top_p <= 1 or not 0 <= min_p <= 1 or top_k < 0:
            raise BackendError(f"sample: bad settings temperature={temperature} top_k={top_k} top_p={top_p} "
                               f"min_p={min_p} repeat_penalty={repeat_penalty}")
        probs = self.scratch("sample_probs", n * 4)
        logits.bind_to_storage_buffer(0)
        tokens.bind_to_storage_buffer(1)
        probs.bind_to_storage_buffer(2)
        self._run(self.program("sample.comp"), 1, n=n, temperature=float(temperature), top_k=int(top_k),
                  top_p=float(top_p), min_p=float(min_p), penalty=float(repeat_penalty),
                  recent_begin=recent_begin, recent_count=recent_count, out_index=out_index,
                  seed=seed & 0xFFFFFFFF, step=step & 0xFFFFFFFF)
        self.barrier()
