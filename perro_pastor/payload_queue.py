"""The hand-over between the loader's worker thread, which prepares each tensor's host payload,
and the GL thread, which uploads it a few MB per step: a queue bounded in bytes, so the worker
stays about one tensor ahead and loading never holds the whole model in RAM."""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable


class PayloadQueue:
    """Payloads in upload order. ``in_flight_bytes`` counts what was put and not yet uploaded."""

    def __init__(self, lock: threading.Condition, limit_bytes: int = 0):
        self.lock, self.limit_bytes = lock, limit_bytes  # the loader's condition: one lock for all
        self.in_flight_bytes = 0
        self._payloads: deque = deque()

    def wait_for_room(self, nbytes: int, cancelled: Callable[[], bool]) -> bool:
        """Block the worker until ``nbytes`` more fit under the limit (a payload larger than the
        limit waits for an empty queue); False if ``cancelled()`` turned true meanwhile."""
        with self.lock:
            while self.in_flight_bytes and self.in_flight_bytes + nbytes > self.limit_bytes:
                if cancelled():
                    return False
                self.lock.wait(0.05)
        return not cancelled()

    def put(self, payload, nbytes: int) -> None:
        with self.lock:
            self.in_flight_bytes += nbytes
            self._payloads.append(payload)
            self.lock.notify_all()

    def take(self):
        """The next payload, or None when the worker has not prepared it yet."""
        with self.lock:
            return self._payloads.popleft() if self._payloads else None

    def uploaded(self, nbytes: int) -> None:
        """``nbytes`` of the payloads reached the GPU: room for the worker."""
        with self.lock:
            self.in_flight_bytes -= nbytes
            self.lock.notify_all()

    def clear(self) -> None:
        with self.lock:
            self._payloads.clear()
