"""A handle on one generated reply (``Session.ask`` returns it): text streams into it as the
scheduler samples tokens, and the caller streams it out (callbacks, iterator, ``async for``),
polls, awaits or cancels it."""

from __future__ import annotations

import asyncio
from typing import Callable, Iterator, Sequence

MAX_STOP_CHARS = 1000  # per stop string: longer ones make every token's check slow
MAX_STOPS = 32


def check_stops(stop: Sequence[str]) -> list[str]:
    """The non-empty stop strings, or ValueError if there are too many or one is too long."""
    stops = [s for s in stop if s]
    if len(stops) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
    for s in stops:
        if len(s) > MAX_STOP_CHARS:
            raise ValueError(f"stop string of {len(s)} characters ({s[:20]!r}...): at most {MAX_STOP_CHARS}")
    return stops


class Reply:
    """A handle on one generated reply: stream it (callbacks, iterator, ``async for``), poll it,
    await it, or cancel it. ``finish_reason``: eos | stop | length | cancelled | context_full | grammar | error.
    ``session`` is the Session it belongs to (it ends the reply; its host drives the waits)."""

    def __init__(self, session, max_tokens: int, stop: Sequence[str],
                 on_token: Callable[[str], None] | None, ignore_eos: bool):
        self.session, self.max_tokens, self.stop = session, max_tokens, check_stops(stop)
        self.callbacks = [on_token] if on_token else []
        self.ignore_eos = ignore_eos
        self.goes_to_history = True  # an assistant line once it ends (not for continue_tokens)
        self.grammar = None  # a grammar.GrammarMatcher when the reply must follow a grammar
        self.token_ids: list[int] = []
        self.text = ""  # what was emitted (stop strings never are)
        self.finish_reason: str | None = None
        self.error: Exception | None = None
        self._pieces: list[str] = []
        self._held = ""  # text that might be the start of a stop string
        self._decoder = session.model.tokenizer.stream_decoder()
        self._event: asyncio.Event | None = None
        self._polled = 0

    # -- state
    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def poll(self) -> str:
        """Text emitted since the last poll ('' if none); never blocks."""
        new = "".join(self._pieces[self._polled:])
        self._polled = len(self._pieces)
        return new

    def cancel(self) -> None:
        """Stop now. The KV cache keeps exactly the tokens it fully processed."""
        if not self.done:
            self.session.finish_reply(self, "cancelled")

    # -- sync driving: each wait ticks the scheduler (for scripts, tests and the CLI)
    def __iter__(self) -> Iterator[str]:
        i = 0
        while True:
            while i < len(self._pieces):
                i += 1
                yield self._pieces[i - 1]
            if self.done:
                break
            host = self.session.host
            host.tick(host.sync_budget_ms)
        if self.error:
            raise self.error

    def result(self) -> str:
        for _ in self:
            pass
        return self.text

    # -- asyncio: a driver task ticks the scheduler once per frame
    def __await__(self):
        return self._wait().__await__()

    async def _wait(self) -> str:
        async for _ in self:
            pass
        return self.text

    async def __aiter__(self):
        self.session.host.ensure_async_driver()
        i = 0
        while True:
            while i < len(self._pieces):
                i += 1
                yield self._pieces[i - 1]
            if self.done:
                break
            self._event = asyncio.Event()
            await self._event.wait()
        if self.error:
            raise self.error

    # -- called by the session as tokens arrive
    def add_token(self, token: int) -> bool:
        """Decode a sampled token and emit its text. True if a stop string matched (the reply
        should end)."""
        return self._feed(self._decoder.feed(token))

    def end(self, reason: str) -> None:
        """Record ``reason`` and emit what was held back (a partial stop string, an unfinished
        character), unless the reply stopped on a stop string or was cancelled. The reply is done
        before any callback runs: a callback that raises here turns the reason into ``error``
        (with the exception attached) and never escapes, except a KeyboardInterrupt or the like,
        which is re-raised with the reply already done."""
        text = self._held + (self._decoder.flush() if reason not in ("stop", "cancelled") else "")
        self._held = ""
        self.finish_reason = reason
        if reason == "cancelled":
            return
        try:
            self._emit(text)
        except Exception as exc:  # the game's on_token raised on the last piece
            self.finish_reason, self.error = "error", self.error or exc

    def wake(self) -> None:
        """Tell an ``async for`` waiting on this reply that something changed."""
        if self._event is not None:
            self._event.set()

    def _emit(self, text: str) -> None:
        if not text:
            return
        self.text += text
        self._pieces.append(text)
        self.wake()
        for callback in self.callbacks:
            try:
                callback(text)
            except BaseException:
                self.callbacks = []  # game code that failed once is not called again
                raise

    def _feed(self, text: str) -> bool:
        """Add decoded text; emit what cannot be part of a stop string. True if a stop matched."""
        buf = self._held + text
        for s in self.stop:
            at = buf.find(s)
            if at >= 0:
                self._held = ""
                self._emit(buf[:at])
                return True
        hold = max((_overlap(buf, s) for s in self.stop), default=0)
        self._held = buf[len(buf) - hold:] if hold else ""
        self._emit(buf[:len(buf) - hold])
        return False


def _overlap(buf: str, s: str) -> int:
    """The length of the longest end of ``buf`` that is a proper start of ``s`` (0 if none)."""
    i = buf.find(s[0], max(0, len(buf) - len(s) + 1))
    while i >= 0:
        if s.startswith(buf[i:]):
            return len(buf) - i
        i = buf.find(s[0], i + 1)
    return 0
