"""Decode passes that run ahead of the CPU (issue 19, gl/run_ahead.py): a lone session's next
pass starts before the CPU has read the token the last one drew; the GPU copies that id into the
next pass's input and penalty window. The streams must be exactly those of the same sessions
without run-ahead, also when a reply ends, is cancelled or another NPC arrives while a pass is
ahead; and ids are read only once their fences have signalled."""

from __future__ import annotations

import pytest

from perro_pastor.errors import BackendError
from perro_pastor.gl import run_ahead
from perro_pastor.model import load
from perro_pastor.sampling import SamplerSettings
from perro_pastor.scheduler import Scheduler

from model_slices import model_slice

# a strong penalty over a short window: a wrong window entry (the placeholder instead of the
# id still on the GPU) changes the draws at once
SEEDED = SamplerSettings(temperature=0.9, top_k=40, top_p=0.95, repeat_penalty=1.5, repeat_last_n=8)
GREEDY_NO_REPEATS = SamplerSettings(temperature=0.0, repeat_penalty=50.0, repeat_last_n=4)


@pytest.fixture(scope="module")
def model():
    try:
        m = load(model_slice("Q4_1", n_layers=2), backend="gl")
    except BackendError as exc:
        pytest.skip(f"no GL 4.3: {exc}")
    m.transformer.gpu_sampling = True  # (a GPU's defaults, on llvmpipe)
    yield m
    m.close()


def ahead_passes(model, monkeypatch) -> list:
    """Count the passes started from an id still on the GPU."""
    calls, plain = [], model.transformer.draw_ahead_steps

    def counting(segment, after=None):
        calls.append(after is not None)
        return plain(segment, after)
    monkeypatch.setattr(model.transformer, "draw_ahead_steps", counting)
    return calls


def run(model, run_ahead_on: bool, script, budget_ms: float = 4.0, ticks: list | None = None):
    """``script(sched)`` makes sessions and asks; tick until every reply is done. Returns what
    the script returns (its sessions' replies and state); ``ticks`` gets the count of ticks."""
    model.transformer.run_ahead = run_ahead_on
    sched = Scheduler(model)
    replies, result = script(sched)
    n = 0
    while not all(r.done for r in replies()):
        assert n < 20_000
        sched.tick(budget_ms)
        n += 1
    if ticks is not None:
        ticks.append(n)
    return result()


def two_replies(settings, max_tokens, stop=()):
    def script(sched):
        npc = sched.session(sampler=settings, seed=11, n_ctx=128)
        first = npc.ask("Tell me about the mill.", max_tokens=max_tokens, stop=stop, ignore_eos=True)
        state = {}

        def replies():
            if first.done and "second" not in state:  # the same session goes on after its first reply
                state["second"] = npc.ask("And the river?", max_tokens=max_tokens, ignore_eos=True)
            return [first] + ([state["second"]] if "second" in state else [first])

        def result():
            return (first.token_ids, first.finish_reason, state["second"].token_ids, npc.n_past,
                    list(npc.tokens), npc.sampler.rng.bit_generator.state)
        return replies, result
    return script


@pytest.mark.parametrize("settings", [SEEDED, GREEDY_NO_REPEATS], ids=["seeded", "greedy-penalty"])
def test_a_stream_run_ahead_is_the_stream_without_it(model, monkeypatch, settings):
    """Two replies of one session: every token, the cache position, the history and the
    sampler's RNG afterwards are the same; the passes really started from ids on the GPU."""
    want = run(model, False, two_replies(settings, 24))
    calls = ahead_passes(model, monkeypatch)
    got = run(model, True, two_replies(settings, 24))
    assert got == want
    assert sum(calls) >= 30  # (2 x 24 tokens: all but each reply's first and last ran ahead)
    if settings is GREEDY_NO_REPEATS:  # the window held the id copied on the GPU
        ids = got[0]
        assert all(ids[i] not in ids[max(0, i - 3):i] for i in range(1, len(ids)))


def test_a_reply_that_stops_drops_the_pass_run_ahead_for_it(model, monkeypatch):
    """A stop string ends the reply while the next pass is already running: that pass is
    dropped (its KV row is written again by the next reply, its seed not used)."""
    text = run(model, False, two_replies(SEEDED, 30))[0]
    stop = model.tokenizer.decode(text[5:7])  # a stop string that ends the first reply early
    want = run(model, False, two_replies(SEEDED, 30, stop=[stop]))
    assert want[1] == "stop"
    got = run(model, True, two_replies(SEEDED, 30, stop=[stop]))
    assert got == want


def test_cancelling_while_a_pass_runs_ahead_loses_nothing(model):
    """on_token cancels the reply at its 5th token, when a pass for the 6th is running: the
    session's next reply is the same as without run-ahead."""
    def script(sched):
        npc = sched.session(sampler=SEEDED, seed=3, n_ctx=128)
        state = {}

        def on_token(_piece):
            state["n"] = state.get("n", 0) + 1
            if state["n"] == 5:
                state["first"].cancel()
        state["first"] = npc.ask("Hello there.", max_tokens=30, ignore_eos=True, on_token=on_token)

        def replies():
            if state["first"].done and "second" not in state:
                state["second"] = npc.ask("Where is the well?", max_tokens=12, ignore_eos=True)
            return [state["first"]] + ([state["second"]] if "second" in state else [])

        def result():
            return state["first"].token_ids, state["first"].finish_reason, state["second"].token_ids, npc.n_past
        return replies, result
    want = run(model, False, script)
    assert want[1] == "cancelled" and len(want[0]) == 5
    assert run(model, True, script) == want


def test_another_npc_arriving_gets_its_batch(model, monkeypatch):
    """A second session that starts talking while the first runs ahead: the first stops
    running ahead, both are served, and each session's tokens are exactly its own stream."""
    def script(sched):
        a = sched.session(sampler=SEEDED, seed=5, n_ctx=128)
        b = sched.session(sampler=SEEDED, seed=6, n_ctx=128)
        first = a.ask("Tell me about the mill.", max_tokens=20, ignore_eos=True)
        state = {"ticks": 0}

        def replies():
            state["ticks"] += 1
            if state["ticks"] == 8 and "b" not in state:
                state["b"] = b.ask("Any news?", max_tokens=10, ignore_eos=True)
            return [first] + ([state["b"]] if "b" in state else [first])

        def result():
            return first.token_ids, state["b"].token_ids
        return replies, result
    got = run(model, True, script)
    assert len(got[0]) == 20 and len(got[1]) == 10
    alone = run(model, True, lambda sched: _alone(sched, 5, "Tell me about the mill.", 20))
    assert got[0] == alone


def _alone(sched, seed, text, n):
    reply = sched.session(sampler=SEEDED, seed=seed, n_ctx=128).ask(text, max_tokens=n, ignore_eos=True)
    return (lambda: [reply]), (lambda: reply.token_ids)


def test_ids_are_read_only_after_their_fence_and_a_waiting_batch_ends_the_tick(model, monkeypatch):
    """A GPU that needs two more looks before each drawn id is ready: the tick ends at a token
    not yet drawn (no spinning on it), the id is read only when ready, the stream unchanged."""
    want = run(model, False, two_replies(SEEDED, 12))
    looks, reads_early = [], []
    plain_ready, plain_read = run_ahead.DrawnToken.ready, run_ahead.DrawnToken.read

    def slow_ready(self):
        self.looks = getattr(self, "looks", 0) + 1
        looks.append(self)
        return self.looks > 2 and plain_ready(self)

    def checked_read(self):
        if getattr(self, "looks", 0) <= 2:
            reads_early.append(self)
        return plain_read(self)
    monkeypatch.setattr(run_ahead.DrawnToken, "ready", slow_ready)
    monkeypatch.setattr(run_ahead.DrawnToken, "read", checked_read)
    ticks = []
    got = run(model, True, two_replies(SEEDED, 12), budget_ms=10_000.0, ticks=ticks)
    assert got == want and looks and not reads_early
    # every id drawn in a run-ahead pass (all but each reply's first, drawn by its prompt's
    # pass) made the tick end twice before it was read; a 10 s budget would otherwise have run
    # each reply in one tick
    assert ticks[0] >= 2 * (2 * 12 - 2)
