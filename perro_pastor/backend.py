"""What every compute backend offers the runtime: the transformer interface, the unit of batched
work (``Segment``) and the step-generator convention.

A forward pass is a generator that yields at dispatch boundaries (about a millisecond apart) and
returns one logits array per segment. The scheduler advances it a step per slot within a frame
budget; plain code drives it to the end with ``run_to_end``. ``cpu.CpuTransformer`` and
``gl.forward.GlTransformer`` both satisfy ``Transformer``; nothing above this module knows which
one it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Iterator, Protocol

import numpy as np

# What a step yields when it found nothing to do (it waits on another thread, e.g. the loader's
# worker): a scheduler leaves that generator until its next tick instead of spinning on it.
IDLE = "idle"

# A checkpoint listener: forward passes call trace("L3.q", values) at named points of the math
# (cpu and gl use the same names), so a diverging kernel is found op by op.
Trace = Callable[[str, np.ndarray], None]


class KVCache(Protocol):
    """One sequence's keys and values of every layer, however a backend stores them."""
    n_ctx: int


@dataclass(frozen=True)
class SampleRequest:
    """Draw a segment's next token inside the backend, from its last logits: a backend whose
    ``can_sample(settings)`` is True (gl: ``sample.comp`` on the GPU, only the 4-byte id read
    back) returns the id instead of the logits row."""
    settings: object  # sampling.SamplerSettings
    seed: int  # this draw's 32-bit seed (the session's Sampler drew it from its own RNG)
    recent: tuple = ()  # the penalty window: the last repeat_last_n ids of the sequence


@dataclass
class Segment:
    """One sequence's share of a batched forward: its tokens, first position and KV cache."""
    tokens: np.ndarray
    pos0: int
    kv: KVCache
    adapters: tuple = ()  # LoRA adapters: objects with .scale and .factors(layer, name) -> (A, B) | None
    sample: SampleRequest | None = None  # the next token drawn by the backend (see SampleRequest)


class Transformer(Protocol):
    """A compute backend for one model."""
    name: str  # "cpu" or "gl"

    def new_cache(self, n_ctx: int) -> KVCache: ...

    def forward(self, tokens: np.ndarray, pos0: int, kv: KVCache, all_logits: bool = False,
                trace: Trace | None = None) -> np.ndarray:
        """Logits of the last token (vocab,), or of every token (T, vocab); fills ``kv``."""

    def forward_steps(self, segments: list[Segment], all_logits: bool = False,
                      trace: Trace | None = None) -> Generator[None, None, list[np.ndarray]]:
        """The forward pass of a batch as a step generator; returns one logits array per segment
        (or, for a segment with a ``sample`` request the backend can serve, the drawn id)."""

    def export_kv(self, kv: KVCache, n_tokens: int) -> np.ndarray:
        """Rows 0..n_tokens-1 as (2, n_layers, n_tokens, n_kv_heads, head_size): keys, values."""

    def import_kv(self, kv: KVCache, array: np.ndarray) -> None:
        """Write rows 0..n-1 of ``kv`` from an ``export_kv`` array."""

    def release_cache(self, kv: KVCache) -> None:
        """Free what ``kv`` holds now rather than at garbage collection (GPU buffers)."""

    def limit_threads(self, n_threads: int | None) -> None:
        """At most ``n_threads`` CPU threads for work started from the calling thread (None: the
        defaults); a backend that computes elsewhere ignores it."""

    def poll(self) -> bool:
        """True when the backend can take the next step without waiting (its GPU fences have
        signalled); a synchronous backend always returns True."""

    def release(self) -> None:
        """Free everything the backend holds; it cannot run afterwards."""


def run_to_end(steps: Generator[None, None, object] | Iterator[None]) -> object:
    """Drive a step generator to completion and return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def forward_one(transformer: Transformer, tokens: np.ndarray, pos0: int, kv: KVCache,
                adapters: tuple = (), all_logits: bool = False) -> np.ndarray:
    """One sequence through ``transformer`` to the end, with its LoRA ``adapters``: the logits of
    its last token (vocab,), or of every token (T, vocab) with ``all_logits``."""
    segment = Segment(np.asarray(tokens), pos0, kv, tuple(adapters))
    return run_to_end(transformer.forward_steps([segment], all_logits))[0]
