"""Frame-time bookkeeping for the HUD and the autoplay report.

Every frame is filed under what was going on while it ran: ``loading``, ``generating`` (some
villager's reply in progress), ``warming`` (no reply, but background work such as the personas'
warm-up) or ``idle``. The report gives percentiles per kind; the HUD shows
the last ``GRAPH_FRAMES`` frame times and the tokens per second over the last second.
"""

from __future__ import annotations

import math
from collections import deque

GRAPH_FRAMES = 120


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = math.ceil(q / 100.0 * len(ordered))  # 1-based
    return ordered[max(0, min(len(ordered), rank) - 1)]


class FrameStats:
    def __init__(self):
        self.frames: dict[str, list[float]] = {"loading": [], "generating": [], "warming": [], "idle": []}
        self.recent: deque[float] = deque(maxlen=GRAPH_FRAMES)
        self.token_times: deque[tuple[float, int]] = deque()
        self.gen_s = 0.0  # wall time with some reply in progress
        self.tick_ms: deque[float] = deque(maxlen=GRAPH_FRAMES)

    def add_frame(self, kind: str, ms: float) -> None:
        self.frames[kind].append(ms)
        self.recent.append(ms)
        if kind == "generating":
            self.gen_s += ms / 1000.0

    def add_tokens(self, now: float, total: int) -> None:
        """Record the scheduler's running token count at ``now`` (for the HUD's tok/s)."""
        self.token_times.append((now, total))
        while len(self.token_times) > 2 and now - self.token_times[0][0] > 1.0:
            self.token_times.popleft()

    def tok_s_recent(self) -> float:
        if len(self.token_times) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.token_times[0], self.token_times[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def fps(self) -> float:
        window = list(self.recent)[-30:]
        return 1000.0 * len(window) / sum(window) if window and sum(window) > 0 else 0.0

    def report(self, tokens: int, load_s: float | None) -> dict:
        gen, idle, loading = self.frames["generating"], self.frames["idle"], self.frames["loading"]
        warming = self.frames["warming"]
        return {
            "frame_ms_p50": percentile(gen, 50), "frame_ms_p95": percentile(gen, 95),
            "frame_ms_p99": percentile(gen, 99), "frame_ms_max": max(gen, default=0.0),
            "idle_frame_ms_p50": percentile(idle, 50), "idle_frame_ms_p99": percentile(idle, 99),
            "idle_frame_ms_max": max(idle, default=0.0),
            "load_frame_ms_p99": percentile(loading, 99), "load_frame_ms_max": max(loading, default=0.0),
            "warm_frame_ms_p99": percentile(warming, 99), "warm_frame_ms_max": max(warming, default=0.0),
            "frames": {k: len(v) for k, v in self.frames.items()},
            "load_s": load_s,
            "tokens_generated": tokens,
            "tok_s": tokens / self.gen_s if self.gen_s else 0.0,
        }
