"""The frame-budgeted scheduler: ``tick(budget_ms)`` once per frame advances every NPC a little
and returns before the budget is spent. It never blocks.

Work is cooperative generators that yield at dispatch boundaries:
- one *batch* at a time: every session in the decode phase (one token each) plus a chunk of the
  highest-priority prefill, run as ONE ``transformer.forward_steps`` call, so each weight is read
  once for all NPCs; then one step per session to sample its next token;
- *jobs*: any generator (e.g. model loading) submitted with a priority. A job step that yields
  ``IDLE`` has nothing to do until the next frame (it waits on another thread): the tick runs
  other work, or ends, instead of spinning on it.

Before each step the scheduler predicts its cost from what the same step cost before (an
exponential average) and stops the tick if it would overrun the budget. A step never splits, so
the first step of a tick always runs (else nothing would progress): the longest tick is about one
step. Priority: the highest-priority work runs first; a running batch is abandoned (preempted) when
a session of higher priority than all of its members needs work. Abandoning is safe: sessions
only count tokens when their batch completes.

On synchronous drivers (cpu, llvmpipe) a step's wall time is its cost. An asynchronous GPU backend
exposes ``transformer.poll() -> bool`` (fences with a zero timeout): while it returns False the
tick ends at once instead of waiting. A lone decoding session whose passes can run ahead of the
CPU gets its batch from ``decode_ahead.py`` (it yields IDLE, ending the tick, while the GPU works).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from typing import Callable, Generator, Iterator

import numpy as np

from . import state
from .backend import IDLE, SampleRequest, Segment, run_to_end
from .chat import BUILTIN
from .decode_ahead import can_run_ahead, decode_ahead
from .sampling import Sampler, SamplerSettings
from .session import Session

PREFIX_CACHE_SIZE = 8
TICKS_KEPT = 100_000  # tick_ms keeps this many: about half an hour at 60 fps, 800 KB
WARMUP_PRIORITY = -100  # below any NPC: a background warm-up runs only while none needs work
WARMUP_CHUNK = 16  # prompt tokens per forward pass of a background warm-up


class Job:
    """A cooperative background job (e.g. loading): a generator advanced one step per slot."""

    def __init__(self, steps: Iterator, priority: int, name: str):
        self.steps, self.priority, self.name = steps, priority, name
        self.done, self.result, self.error = False, None, None
        self.resting = False  # its last step yielded IDLE: skipped for the rest of this tick


class Scheduler:
    def __init__(self, model, clock: Callable[[], float] = time.perf_counter, max_batch: int = 8,
                 prefill_chunk: int = 32, sync_budget_ms: float = 50.0):
        self.model, self.clock = model, clock
        self.max_batch, self.prefill_chunk, self.sync_budget_ms = max_batch, prefill_chunk, sync_budget_ms
        self.sessions: list[Session] = []
        self.jobs: list[Job] = []
        self.prefix_cache: OrderedDict[tuple, object] = OrderedDict()  # system prompt -> KV rows
        self.step_cost: dict[tuple, float] = {}  # (kind, batch tokens, step index) -> seconds (EMA)
        self._worst: dict[str, float] = {}  # kind -> a slowly decaying max of step costs
        self.tick_ms: list[float] = []  # wall time of the latest ticks (TICKS_KEPT or more), for benchmarks
        self.tokens_generated = 0
        self._batch: Generator | None = None
        self._batch_members: list[Session] = []
        self._batch_key: tuple = ()
        self._batch_step = 0
        self._batch_steps_run = 0  # ever, by any batch (a background warm-up watches it)
        self._driver: asyncio.Task | None = None
        self._ticking = False  # a tick is running (a callback that ticks again is refused)

    # -------------------------------------------------------------------------
    # sessions and jobs

    def session(self, **options) -> Session:
        """A new NPC on this scheduler's model (see ``Session`` for the options)."""
        s = Session(self, self.model, **options)
        self.sessions.append(s)
        return s

    def restore(self, data: bytes, lora=None, hook=None, where: str = "saved NPC") -> Session:
        """A session from ``Session.save()`` bytes (refused with StateError on a mismatch).
        ``lora`` must be the adapter it was saved with; ``hook`` re-attaches a sampler hook
        (code is not saved)."""
        try:
            adapter = state.adapter_hash(lora)
        except (TypeError, ValueError) as exc:
            raise state.StateError(f"{where}: lora is not an adapter: {exc}") from None
        saved = state.unpack(data, state.model_hash(self.model), adapter, self.model.file.path.name,
                             where, state.limits_for(self.model))
        fields, s = saved.fields, None
        try:
            sampler = Sampler(SamplerSettings(**fields["settings"], hook=hook), fields["seed"])
            options = dict(system_prompt=fields["system_prompt"], sampler=sampler, priority=fields["priority"],
                           n_ctx=fields["n_ctx"], context_policy=fields["context_policy"], lora=lora,
                           name=fields["name"],
                           template=fields["template"] if fields["template"] in BUILTIN else None)
            s = Session(self, self.model, **options)
            s.restore(saved)
        except Exception as exc:  # a save is untrusted input: whatever it breaks is a StateError
            if s is not None:
                self.model.transformer.release_cache(s.kv)
            raise state.StateError(f"{where}: corrupt session fields: {type(exc).__name__}: {exc}") from None
        self.sessions.append(s)
        return s

    def fork(self, session: Session, seed: int | None = None, **overrides) -> Session:
        """A branch of ``session``'s dialogue (``Session.fork``): same history and KV rows, its
        own future; the same RNG state unless a new ``seed`` is given."""
        sampler = Sampler(session.sampler.settings, seed) if seed is not None else session.sampler.clone()
        if session.busy:
            raise RuntimeError(f"session {session.name!r} is generating; cancel or await the reply before forking")
        other = Session(self, self.model, **{**session.options(), "sampler": sampler, **overrides})
        try:
            other.continue_from(session)
        except BaseException:
            self.model.transformer.release_cache(other.kv)
            raise
        self.sessions.append(other)
        return other

    def cached_prefix(self, prefix: list[int]) -> np.ndarray | None:
        """The KV rows of a system prompt computed before (``warmup`` or an earlier session)."""
        return self.prefix_cache.get(tuple(prefix))

    def remove(self, session: Session) -> None:
        """Stop ``session`` for good: its reply is cancelled and its KV cache freed now (GPU
        buffers on the gl backend). Removing it twice is refused."""
        if session not in self.sessions:
            raise ValueError(f"session {session.name!r} is not on this scheduler (removed already?)")
        session.cancel()
        if self._batch is not None and session in self._batch_members:
            self._abandon_batch()  # its pass still holds the cache about to be freed
        self.sessions.remove(session)
        self.model.transformer.release_cache(session.kv)
        session.kv = None  # a removed session cannot run again

    def submit(self, steps: Iterator, priority: int = 0, name: str = "job") -> Job:
        """Run a generator through the scheduler, one ``next`` per slot."""
        job = Job(iter(steps), priority, name)
        self.jobs.append(job)
        return job

    def warmup(self, system_prompt: str, background: bool = False, priority: int = WARMUP_PRIORITY,
               **options) -> Job | None:
        """Compute a system prompt's KV once, so sessions that start with it skip its prefill.

        Blocking by default. With ``background=True`` it is a job of low ``priority`` that frame
        ticks run while no NPC needs work (a game warms its NPCs' personas while the player walks
        up to them); it returns the Job. ``options`` are ``Session``'s (the template decides the
        tokens, so pass the one the NPC will use)."""
        steps = self._warmup_steps(system_prompt, options)
        if background:
            return self.submit(steps, priority, name="warm-up")
        run_to_end(steps)
        return None

    def _warmup_steps(self, system_prompt: str, options: dict) -> Iterator[None]:
        s = Session(self, self.model, system_prompt=system_prompt, **options)  # a throwaway, not scheduled
        try:
            done = 0
            while s.prefix and tuple(s.prefix) not in self.prefix_cache:
                # short passes, so that one step stays short (all steps of a job share one cost
                # estimate); a batch that runs in between may reuse the backend's scratch buffers
                # (the gl backend's are shared by every pass): then that pass starts over
                chunk = s.prefix[done:done + WARMUP_CHUNK]
                batches_before = self._batch_steps_run
                for _ in self.model.transformer.forward_steps([Segment(chunk, done, s.kv)]):
                    yield
                    if self._batch_steps_run != batches_before:
                        break
                else:
                    done += len(chunk)
                    if done == len(s.prefix):
                        self._cache_prefix(s.prefix, s)
        finally:
            self.model.transformer.release_cache(s.kv)  # a GL cache holds buffers

    def _cache_prefix(self, prefix: list[int], s: Session) -> None:
        self.prefix_cache[tuple(prefix)] = self.model.transformer.export_kv(s.kv, len(prefix))
        while len(self.prefix_cache) > PREFIX_CACHE_SIZE:
            self.prefix_cache.popitem(last=False)

    def wake(self, session: Session) -> None:
        """``session`` has work (``Session.ask``)."""
        if session not in self.sessions:
            self.sessions.append(session)

    # -------------------------------------------------------------------------
    # the frame tick

    def tick(self, budget_ms: float) -> int:
        """Advance work for at most ``budget_ms`` (one step may overrun it). Returns steps run.
        Not re-entrant: game code called from a tick (``on_token``, a sampler hook) that ticks
        again, or waits on a reply, gets a RuntimeError (which ends only that NPC's reply)."""
        if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) \
                or not math.isfinite(budget_ms) or budget_ms < 0:
            raise ValueError(f"tick budget must be a finite number of ms >= 0, got {budget_ms!r}")
        if self._ticking:
            raise RuntimeError("Scheduler.tick called from inside a tick (an on_token callback or "
                               "sampler hook that ticks or waits on a reply?)")
        self._ticking = True
        try:
            return self._tick(budget_ms)
        finally:
            self._ticking = False

    def _tick(self, budget_ms: float) -> int:
        start = now = self.clock()
        budget = budget_ms / 1000.0
        steps = 0
        poll = self.model.transformer.poll if self.model is not None else None  # None: jobs only
        for job in self.jobs:
            job.resting = False
        while True:
            if poll is not None and not poll():
                break  # async GPU backend: a fence is still pending; look again next frame
            work = self._pick()
            if work is None:
                break
            key, advance = work
            # a step never seen before is assumed as costly as the worst recent one of its kind
            estimate = self.step_cost.get(key, self._worst.get(key[0], 0.0))
            if steps and now - start + estimate > budget:
                break
            t0 = now  # (choosing the step counts as part of it)
            advance()
            now = self.clock()
            cost = now - t0
            old = self.step_cost.get(key)
            self.step_cost[key] = cost if old is None else 0.7 * old + 0.3 * cost
            self._worst[key[0]] = max(cost, 0.9 * self._worst.get(key[0], 0.0))
            steps += 1
            if now - start >= budget or (self._batch is not None and self._batch_step == "wait"):
                break  # (a run-ahead batch waits for the GPU: look again next frame)
        self.tick_ms.append((now - start) * 1000.0)
        if len(self.tick_ms) > 2 * TICKS_KEPT:  # a game runs for hours: keep the latest only
            del self.tick_ms[:-TICKS_KEPT]
        return steps

    def idle(self) -> bool:
        return self._batch is None and not self.jobs and not any(self._wants_work(s) for s in self.sessions)

    def _wants_work(self, s: Session) -> bool:
        return s.busy and len(s.tokens) > s.n_past

    def _pick(self):
        """The next step to run, as (cost key, callable), or None when there is nothing to do."""
        waiting = [s for s in self.sessions if self._wants_work(s) and s not in self._batch_members]
        top_waiting = max((s.priority for s in waiting), default=None)
        if self._batch is not None and top_waiting is not None \
                and top_waiting > max(s.priority for s in self._batch_members):
            self._abandon_batch()  # preempt background chatter for the more important NPC
        batch_priority = (max(s.priority for s in self._batch_members) if self._batch is not None
                          else top_waiting)
        job = max((j for j in self.jobs if not j.resting), key=lambda j: j.priority, default=None)
        if job is not None and (batch_priority is None or job.priority > batch_priority):
            return ("job", job.name), lambda: self._advance_job(job)
        if self._batch is None:
            if not waiting:
                return None
            self._start_batch(waiting)
        return (*self._batch_key, self._batch_step), self._advance_batch

    def _advance_job(self, job: Job) -> None:
        try:
            job.resting = next(job.steps) is IDLE
        except StopIteration as done:
            job.done, job.result = True, done.value
            self.jobs.remove(job)
        except Exception as exc:  # a failed job must not take the game's frame loop down
            job.done, job.error = True, exc
            self.jobs.remove(job)

    # -------------------------------------------------------------------------
    # batches

    def _start_batch(self, waiting: list[Session]) -> None:
        waiting.sort(key=lambda s: -s.priority)  # stable: equal priorities keep creation order
        decoding = [s for s in waiting if len(s.pending()) == 1]
        prefilling = [s for s in waiting if len(s.pending()) > 1]
        # the most important prefill always rides along, so a new speaker never starves
        members = decoding[: self.max_batch - 1 if prefilling else self.max_batch] + prefilling[:1]
        # highest priority first: the on-screen speaker's sampling step comes first
        members.sort(key=lambda s: -s.priority)
        plan = []
        for s in members:
            pending = s.pending()
            n = min(len(pending), self.prefill_chunk)
            if s.n_past < len(s.prefix) and tuple(s.prefix) not in self.prefix_cache:
                n = min(n, len(s.prefix) - s.n_past)  # stop at the system prompt to cache it
            plan.append((s, s.epoch, s.n_past, pending[:n], self._draw_request(s, n)))
        self._batch_members = members
        if len(plan) == 1 and len(plan[0][3]) == 1 and plan[0][4] is not None \
                and can_run_ahead(self.model.transformer, plan[0][0]):
            s, epoch, pos0, _, draw = plan[0]
            self._batch_key, self._batch_step = ("ahead", 1), "pass"
            others_wait = lambda: any(self._wants_work(o) for o in self.sessions if o is not s)  # noqa: E731
            self._batch = decode_ahead(self.model.transformer, s, epoch, pos0, draw, others_wait, self._sample)
            return
        self._batch_key = ("batch", sum(len(p[3]) for p in plan))
        self._batch_step = 0
        self._batch = self._run_batch(plan)

    def _run_batch(self, plan) -> Generator:
        """Forward every member's tokens as one batch, then sample for each member in turn."""
        segments = [Segment(tokens, pos0, s.kv, s.adapters, draw) for s, _, pos0, tokens, draw in plan]
        logits = yield from self.model.transformer.forward_steps(segments)
        for (s, epoch, pos0, tokens, _), row in zip(plan, logits):
            if s.epoch != epoch or s.n_past != pos0:
                continue  # cancelled or replaced while in flight: its rows are simply rewritten later
            s.n_past = pos0 + len(tokens)
            if len(s.prefix) == s.n_past and s.tokens[:s.n_past] == s.prefix \
                    and tuple(s.prefix) not in self.prefix_cache:
                self._cache_prefix(s.prefix, s)
            if s.n_past == len(s.tokens) and s.busy:
                yield  # sampling is a step of its own (it costs a few ms on a 50k vocabulary)
                if s.epoch == epoch:
                    self._sample(s, row)

    def _draw_request(self, s: Session, n_tokens: int) -> SampleRequest | None:
        """The backend draws ``s``'s next token itself (gl: on the GPU, only the id read back)
        when this batch ends its pending tokens, its reply has no grammar and the backend covers
        its sampler's settings (``can_sample``); else None: logits come back, sampled here."""
        can_sample = getattr(self.model.transformer, "can_sample", None)
        if can_sample is None or not s.busy or s.n_past + n_tokens != len(s.tokens) \
                or s.reply.grammar is not None or not can_sample(s.sampler.settings):
            return None
        return s.sampler.request(s.tokens)

    def _sample(self, s: Session, row: np.ndarray | int) -> None:
        """Sample and hand over ``s``'s next token (``row``: logits, or the id the backend drew).
        Game code runs here (a sampler hook, the reply's on_token): whatever it raises ends this
        NPC's reply only, with the exception attached; a KeyboardInterrupt ends it as cancelled
        and goes on up."""
        try:
            if isinstance(row, (int, np.integer)):  # drawn by the backend from s's request
                token = int(row)
                s.sampler.drew()
            else:
                token = s.choose_token(row)
            if token is not None:
                s.accept_token(token)
                self.tokens_generated += 1
        except Exception as exc:
            s.finish_reply(s.reply, "error", error=exc)
        except BaseException:
            s.finish_reply(s.reply, "cancelled")
            raise

    def _advance_batch(self) -> None:
        try:
            self._batch_steps_run += 1
            out = next(self._batch)
            if out is IDLE:  # (a run-ahead batch waits for the GPU)
                self._batch_step = "wait"
            elif isinstance(out, str):  # (a run-ahead batch's named step)
                self._batch_step = out
            else:
                self._batch_step += 1
        except StopIteration:
            self._batch, self._batch_members = None, []
        except Exception as exc:  # e.g. a backend error: fail these replies, keep the game running
            members, self._batch, self._batch_members = self._batch_members, None, []
            for s in members:
                if s.busy:
                    s.finish_reply(s.reply, "error", error=exc)
        except BaseException:  # KeyboardInterrupt from game code: the other members go on later
            self._abandon_batch()
            raise

    def _abandon_batch(self) -> None:
        self._batch.close()
        for s in self._batch_members:
            if s.busy and s.n_past == len(s.tokens):
                # its rows were computed but its token never sampled: recompute the last row
                # next time, for its logits (else it would wait forever with nothing to run)
                s.n_past -= 1
        self._batch, self._batch_members = None, []

    # -------------------------------------------------------------------------
    # asyncio

    async def run(self, budget_ms: float = 4.0, frame_s: float = 1 / 60) -> None:
        """Tick once per frame forever (cancel the task to stop): the asyncio driver."""
        while True:
            self.tick(budget_ms)
            await asyncio.sleep(frame_s if self.idle() else 0)

    def ensure_async_driver(self, budget_ms: float = 4.0) -> None:
        """Start ``run`` on the running loop unless a driver is already going."""
        loop = asyncio.get_running_loop()
        if self._driver is None or self._driver.done() or self._driver.get_loop() is not loop:
            self._driver = loop.create_task(self.run(budget_ms))  # (a driver of a closed loop is dead)
