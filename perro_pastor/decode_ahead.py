"""The scheduler's batch for a lone decoding session whose passes run ahead of the CPU: each pass
starts before the CPU has read the token the pass before it drew (the backend copies that id on
the GPU: gl/run_ahead.py), so submitting the next pass overlaps the GPU's work on this one.

An id is read only once its fence has signalled; until then the batch yields ``IDLE`` (nothing to
do this frame: the tick ends). Tokens are accepted in order. A pass started for a token the reply
then does not take (it ended, was cancelled or replaced, or another session needs a batch) is
dropped: its KV row is written again later and its seed was only peeked
(``Sampler.request(ahead=1)``). Steps are named ("pass"; the scheduler names the wait "wait") so
their cost keys stay few.
"""

from __future__ import annotations

from typing import Callable, Generator

from .backend import IDLE, SampleRequest, Segment


def can_run_ahead(transformer, s) -> bool:
    """Whether ``s``'s decode, alone in its batch, runs ahead on this backend (gl with
    ``run_ahead`` set; not with LoRA adapters)."""
    return getattr(transformer, "run_ahead", False) and hasattr(transformer, "draw_ahead_steps") \
        and not s.adapters


def decode_ahead(transformer, s, epoch: int, pos: int, request: SampleRequest,
                 others_wait: Callable[[], bool], hand_over: Callable[[object, int], None]) -> Generator:
    """Decode ``s`` from its pending token at ``pos`` (drawn with ``request``) for as long as its
    reply goes on and ``others_wait()`` is False; ``hand_over(s, id)`` accepts each token (the
    scheduler's sampling step, which moves the sampler past its seed)."""
    drawn = ahead = None
    try:
        first = Segment(s.tokens[pos:pos + 1], pos, s.kv, (), request)
        drawn = yield from named(transformer.draw_ahead_steps(first), "pass")
        while True:
            if wants_the_next(s, epoch, pos) and not others_wait():
                request = s.sampler.request(s.tokens + [-1], ahead=1)  # (-1: the id still on the GPU)
                segment = Segment([-1], pos + 1, s.kv, (), request)
                ahead = yield from named(transformer.draw_ahead_steps(segment, after=drawn), "pass")
            while not drawn.ready():
                yield IDLE
            token = drawn.read()
            if s.epoch != epoch or s.n_past != pos:
                return  # cancelled or replaced while in flight
            s.n_past = pos + 1
            hand_over(s, token)
            if ahead is None or s.epoch != epoch or not s.busy or s.pending() != [token]:
                return
            drawn, ahead, pos = ahead, None, pos + 1
    finally:
        for unread in (drawn, ahead):
            if unread is not None:
                unread.release()


def wants_the_next(s, epoch: int, pos: int) -> bool:
    """Whether to start ``s``'s next pass before its current token is known: the reply will want
    it (it is not at its token limit and has no grammar) and it fits the cache."""
    reply = s.reply
    return (s.busy and s.epoch == epoch and reply.grammar is None
            and len(reply.token_ids) + 1 < reply.max_tokens and pos + 1 < s.kv.n_ctx)


def named(steps: Generator, name: str) -> Generator:
    """``steps`` with its plain yields named ``name``; returns what it returns."""
    try:
        while True:
            try:
                out = next(steps)
            except StopIteration as done:
                return done.value
            yield name if out is None else out
    finally:
        steps.close()
