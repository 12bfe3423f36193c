"""Turning logits into the next token: greedy, or seeded sampling with temperature, top-k,
typical, top-p, min-p, repetition/frequency/presence penalties, logit bias and a pluggable hook.

The chain runs in llama.cpp's default order — logit bias, penalties, hook, top-k, typical, top-p,
min-p, temperature, draw — so the same settings mean the same thing here as there. The sampler
owns its RNG: the same seed and settings give the same tokens, and the RNG state can be saved
(``get_state``/``set_state``) so a restored NPC continues exactly where it left off.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .backend import SampleRequest

# A hook sees the (biased, penalized) logits, the recent tokens and the sampler's RNG, and returns
# new logits (the chain goes on with them) or a token id (taken as the answer).
SamplerHook = Callable[[np.ndarray, Sequence[int], np.random.Generator], "np.ndarray | int"]


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 40  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    min_p: float = 0.05  # 0.0 = off
    repeat_penalty: float = 1.0  # 1.0 = off
    repeat_last_n: int = 64  # window of recent tokens every penalty looks at
    typical_p: float = 1.0  # 1.0 = off (locally typical sampling)
    frequency_penalty: float = 0.0  # subtracted once per occurrence in the window
    presence_penalty: float = 0.0  # subtracted once if present in the window
    logit_bias: Any = ()  # {token_id: bias} (stored as sorted pairs); -inf bans, +inf forces
    hook: SamplerHook | None = field(default=None, compare=False)

    def __post_init__(self):
        for name in ("top_k", "repeat_last_n"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an int, got {getattr(self, name)!r}")
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "typical_p", "frequency_penalty",
                     "presence_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) \
                    or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.hook is not None and not callable(self.hook):
            raise ValueError(f"hook must be callable, got {type(self.hook).__name__}")
        bias = self.logit_bias.items() if isinstance(self.logit_bias, Mapping) else self.logit_bias
        try:
            pairs = tuple(sorted((t, float(b)) for t, b in bias))
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias must map token ids to numbers, got {self.logit_bias!r:.80}") from None
        if not all(_is_int(t) for t, _ in pairs) or any(np.isnan(b) for _, b in pairs):
            raise ValueError(f"logit_bias must map int token ids to numbers, got {self.logit_bias!r:.80}")
        object.__setattr__(self, "logit_bias", tuple((int(t), b) for t, b in pairs))
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
            (0 < self.typical_p <= 1, "typical_p must be in (0, 1]"),
            (all(t >= 0 for t, _ in self.logit_bias), "logit_bias token ids must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        """JSON-able settings (the hook is code, so it is not saved: pass it again on restore)."""
        names = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                 "typical_p", "frequency_penalty", "presence_penalty")
        d = {n: getattr(self, n) for n in names}
        d["logit_bias"] = [list(p) for p in self.logit_bias]
        return d


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


GREEDY = SamplerSettings(temperature=0.0)


def apply_repetition_penalty(logits: np.ndarray, recent: list[int], penalty: float) -> np.ndarray:
    """Make recently seen tokens less likely: positive logits are divided by the penalty,
    negative ones multiplied (so both move toward 'less likely')."""
    if penalty == 1.0 or not recent:
        return logits
    logits = logits.copy()
    # (a set, not np.unique: NumPy 2's unique imports numpy.ma on first use, ~50 ms in the
    # middle of a game's frame)
    ids = np.fromiter(set(recent), dtype=np.int64)
    seen = logits[ids]
    logits[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def apply_frequency_presence(logits: np.ndarray, recent: list[int], frequency: float,
                             presence: float) -> np.ndarray:
    """OpenAI-style penalties: logit -= count * frequency + (count > 0) * presence."""
    if (frequency == 0 and presence == 0) or not recent:
        return logits
    counts = Counter(recent)  # (not np.unique: see apply_repetition_penalty)
    ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    n = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    logits = logits.copy()
    logits[ids] -= n * frequency + presence
    return logits


def typical_filter(cand: np.ndarray, probs: np.ndarray, p: float) -> np.ndarray:
    """Locally typical sampling: keep the tokens whose surprise is closest to the distribution's
    entropy until their mass reaches p. Returns the indices kept, in their original order."""
    logp = np.log(np.maximum(probs, 1e-300))
    entropy = -np.sum(probs * logp)
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    keep = int(np.searchsorted(np.cumsum(probs[order]), p)) + 1
    return np.sort(order[:keep])


def top_candidates(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits, most likely first, ties in id order — the same answer as a
    stable full argsort, found with a partition so a 50k vocabulary costs a fraction of it."""
    if k == 0 or k >= len(logits):
        return np.argsort(-logits, kind="stable")
    threshold = np.partition(logits, len(logits) - k)[len(logits) - k]
    ids = np.flatnonzero(logits >= threshold)  # ascending ids; ties at the threshold all included
    return ids[np.argsort(-logits[ids], kind="stable")][:k]


def entropy_adaptive_hook(low: float = 0.5, high: float = 3.0, hot: float = 1.5) -> SamplerHook:
    """An entropix-style hook: when the model is sure (entropy < low nats) take the argmax; when
    it is lost (entropy > high) flatten the distribution by ``hot`` to explore."""
    def hook(logits: np.ndarray, recent: Sequence[int], rng: np.random.Generator):
        z = logits - logits.max()
        probs = np.exp(z)
        probs /= probs.sum()
        entropy = float(-np.sum(probs * np.log(np.maximum(probs, 1e-300))))
        if entropy < low:
            return int(np.argmax(logits))
        return logits / hot if entropy > high else logits
    return hook


class Sampler:
    def __init__(self, settings: SamplerSettings = SamplerSettings(), seed: int | None = None):
        self.settings = settings
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def get_state(self) -> dict:
        """The RNG state (JSON-able), for save games."""
        return copy.deepcopy(self.rng.bit_generator.state)

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = copy.deepcopy(state)

    def clone(self) -> "Sampler":
        """Same settings and the same RNG state: both copies draw the same future tokens."""
        other = Sampler(self.settings, self.seed)
        other.set_state(self.get_state())
        return other

    def request(self, recent: Sequence[int] = (), ahead: int = 0) -> SampleRequest:
        """The next draw for a backend that samples itself (``backend.SampleRequest``): these
        settings, the penalty window of ``recent``, and the seed this sampler's RNG would draw
        next, peeked: ``drew()`` moves the RNG past it once the drawn token is used, so a request
        whose batch is abandoned leaves the stream as it was (saving, restoring and cloning a
        sampler keep meaning the same future draws). ``ahead``: the draw after that many more
        (a pass run ahead of the one whose token is not yet known)."""
        n = self.settings.repeat_last_n
        window = tuple(int(t) for t in list(recent)[-n:]) if n else ()
        peek = np.random.Generator(type(self.rng.bit_generator)())
        peek.bit_generator.state = self.rng.bit_generator.state
        for _ in range(ahead + 1):
            seed = int(peek.integers(1 << 32))
        return SampleRequest(self.settings, seed, window)

    def drew(self) -> None:
        """A backend's draw from the latest ``request`` was used: the RNG moves past its seed."""
        self.rng.integers(1 << 32)

    def sample(self, logits: np.ndarray, recent: Sequence[int] = ()) -> int:
        s = self.settings
        logits = np.asarray(logits, dtype=np.float64)
        if s.logit_bias:
            logits = logits.copy()
            for token, bias in s.logit_bias:
                if token < len(logits):
                    logits[token] += bias
        window = list(recent)[-s.repeat_last_n:] if s.repeat_last_n else []
        logits = apply_repetition_penalty(logits, window, s.repeat_penalty)
        logits = apply_frequency_presence(logits, window, s.frequency_penalty, s.presence_penalty)
        if s.hook is not None:
            out = s.hook(logits, window, self.rng)
            if _is_int(out):
                if not 0 <= out < len(logits):
                    raise ValueError(f"sampler hook returned token id {out}, outside 0..{len(logits) - 1}")
                return int(out)
            shape = getattr(out, "shape", None)
            if not isinstance(out, np.ndarray) or shape != logits.shape or out.dtype.kind not in "fiu":
                raise ValueError(f"sampler hook must return a token id or logits of shape {logits.shape}, "
                                 f"got {type(out).__name__} {shape or ''}")
            logits = out.astype(np.float64)
        if s.temperature == 0:
            return int(np.argmax(logits))

        # candidates, most likely first (a stable sort keeps ties in id order: deterministic)
        order = top_candidates(logits, s.top_k)
        cand = logits[order]
        if not np.isfinite(cand[0]):  # +inf forces a token; all -inf would be a caller error
            return int(order[0])

        probs = np.exp(cand - cand[0])
        probs /= probs.sum()
        if s.typical_p < 1.0:
            keep = typical_filter(cand, probs, s.typical_p)
            order, cand = order[keep], cand[keep]
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
