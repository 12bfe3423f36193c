"""Turning logits into the next token: greedy, or seeded sampling with temperature, top-k,
top-p, min-p and a repetition penalty.

The chain runs in llama.cpp's default order — penalties, top-k, top-p, min-p, temperature, draw —
so the same settings mean the same thing here as there. The sampler owns its RNG: the same seed
and settings give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 40  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    min_p: float = 0.05  # 0.0 = off
    repeat_penalty: float = 1.0  # 1.0 = off
    repeat_last_n: int = 64  # window of recent tokens the penalty looks at

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


GREEDY = SamplerSettings(temperature=0.0)


def apply_repetition_penalty(logits: np.ndarray, recent: list[int], penalty: float) -> np.ndarray:
    """Make recently seen tokens less likely: positive logits are divided by the penalty,
    negative ones multiplied (so both move toward 'less likely')."""
    if penalty == 1.0 or not recent:
        return logits
    logits = logits.copy()
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    seen = logits[ids]
    logits[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
    return logits


class Sampler:
    def __init__(self, settings: SamplerSettings = SamplerSettings(), seed: int | None = None):
        self.settings = settings
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def sample(self, logits: np.ndarray, recent: list[int] = ()) -> int:
        s = self.settings
        logits = np.asarray(logits, dtype=np.float64)
        if s.repeat_last_n:
            logits = apply_repetition_penalty(logits, list(recent)[-s.repeat_last_n:], s.repeat_penalty)
        if s.temperature == 0:
            return int(np.argmax(logits))

        # candidates, most likely first (a stable sort keeps ties in id order: deterministic)
        order = np.argsort(-logits, kind="stable")
        if s.top_k:
            order = order[: s.top_k]
        cand = logits[order]

        probs = np.exp(cand - cand[0])
        probs /= probs.sum()
        if s.top_p < 1.0:
            # keep the smallest prefix whose probability mass reaches top_p
            keep = int(np.searchsorted(np.cumsum(probs), s.top_p)) + 1
            order, cand, probs = order[:keep], cand[:keep], probs[:keep]
        if s.min_p > 0:
            # drop candidates less likely than min_p times the most likely one
            keep = probs >= s.min_p * probs[0]
            order, cand = order[keep], cand[keep]

        scaled = (cand - cand[0]) / s.temperature
        probs = np.exp(scaled)
        probs /= probs.sum()
        return int(order[self.rng.choice(len(order), p=probs)])
