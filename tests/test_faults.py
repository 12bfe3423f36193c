"""Fault isolation: game code (callbacks, sampler hooks) and bad settings of one NPC end that
NPC's reply only; every other NPC in its batch answers exactly as it would have alone."""

import numpy as np
import pytest

from perro_pastor.sampling import GREEDY, SamplerSettings
from perro_pastor.scheduler import Scheduler

from runtime_model import small_model

SYSTEM = "You are Bob, the village smith."
QUESTIONS = ["Hello, who are you?", "What do you sell?", "Is the dragon near?"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_model(tmp_path_factory)


@pytest.fixture(scope="module")
def alone(model):
    out = []
    for q in QUESTIONS[:2]:
        r = Scheduler(model).session(system_prompt=SYSTEM, sampler=GREEDY, n_ctx=96).ask(
            q, max_tokens=4, ignore_eos=True)
        r.result()
        out.append(r.token_ids)
    return out


def raising(exc):
    def f(*args):
        raise exc
    return f


def batch_with_one_faulty(model, faulty_sampler=GREEDY, on_token=None, sched=None):
    sched = sched or Scheduler(model)
    good = [sched.session(system_prompt=SYSTEM, sampler=GREEDY, n_ctx=96) for _ in range(2)]
    bad = sched.session(system_prompt=SYSTEM, sampler=faulty_sampler, n_ctx=96, name="bad")
    replies = [s.ask(q, max_tokens=4, ignore_eos=True) for s, q in zip(good, QUESTIONS)]
    bad_reply = bad.ask(QUESTIONS[2], max_tokens=4, ignore_eos=True, on_token=on_token)
    return sched, replies, bad_reply, bad


def hook_returning(value):
    return SamplerSettings(temperature=0.0, hook=lambda logits, recent, rng: value)


FAULTS = {
    "on_token raises": dict(on_token=raising(ValueError("game bug"))),
    "hook raises": dict(faulty_sampler=SamplerSettings(temperature=0.0, hook=raising(ZeroDivisionError("x")))),
    "hook id out of range": dict(faulty_sampler=hook_returning(10**9)),
    "hook negative id": dict(faulty_sampler=hook_returning(-1)),
    "hook not an int": dict(faulty_sampler=hook_returning("abc")),
    "hook float id": dict(faulty_sampler=hook_returning(3.0)),
    "hook wrong shape": dict(faulty_sampler=hook_returning(np.zeros(3))),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_one_faulty_npc_never_stops_the_others(model, alone, fault):
    sched, replies, bad_reply, bad = batch_with_one_faulty(model, **FAULTS[fault])
    for _ in range(200):
        if all(r.done for r in replies) and bad_reply.done:
            break
        sched.tick(1000)
    assert [r.token_ids for r in replies] == alone
    assert [r.finish_reason for r in replies] == ["length", "length"]
    assert bad_reply.finish_reason == "error" and isinstance(bad_reply.error, Exception), fault
    assert not bad.busy and bad.n_past == len(bad.tokens)
    r = bad.ask("Still there?", max_tokens=2, ignore_eos=True, on_token=None)  # the NPC answers again
    if fault == "on_token raises":
        assert r.result() is not None and r.finish_reason == "length"


def test_tick_from_a_callback_is_refused_for_that_npc_only(model, alone):
    holder = {}
    sched, replies, bad_reply, _ = batch_with_one_faulty(model, on_token=lambda t: holder["s"].tick(1))
    holder["s"] = sched
    while not (all(r.done for r in replies) and bad_reply.done):
        sched.tick(1000)
    assert [r.token_ids for r in replies] == alone
    assert bad_reply.finish_reason == "error" and "inside a tick" in str(bad_reply.error)


def test_waiting_on_a_reply_from_a_callback_is_refused(model, alone):
    holder = {}
    sched, replies, bad_reply, _ = batch_with_one_faulty(model, on_token=lambda t: holder["r"].result())
    holder["r"] = replies[0]
    while not (all(r.done for r in replies) and bad_reply.done):
        sched.tick(1000)
    assert [r.token_ids for r in replies] == alone and bad_reply.finish_reason == "error"


def test_keyboard_interrupt_from_on_token_ends_that_reply_and_goes_up(model, alone):
    sched, replies, bad_reply, bad = batch_with_one_faulty(model, on_token=raising(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        for _ in range(200):
            sched.tick(1000)
    assert bad_reply.done and bad_reply.finish_reason == "cancelled" and not bad.busy
    for _ in range(200):
        if all(r.done for r in replies):
            break
        sched.tick(1000)
    assert [r.token_ids for r in replies] == alone


@pytest.mark.parametrize("settings", [dict(top_k=2.5), dict(top_k=True), dict(repeat_last_n=1.5),
                                      dict(temperature=float("nan")), dict(top_p="0.9"),
                                      dict(logit_bias={"a": 1}), dict(logit_bias={1: float("nan")}),
                                      dict(hook=42)])
def test_bad_sampler_settings_are_refused_before_any_batch(settings):
    with pytest.raises(ValueError):
        SamplerSettings(**settings)


@pytest.mark.parametrize("options", [dict(lora=object()), dict(lora=["not an adapter"]), dict(priority="high"),
                                     dict(priority=1.5), dict(n_ctx=64.5), dict(system_prompt=5)])
def test_bad_session_options_are_refused_at_creation(model, options):
    sched = Scheduler(model)
    with pytest.raises((TypeError, ValueError)):
        sched.session(**options)
    assert sched.sessions == []


@pytest.mark.parametrize("call", [
    lambda s: s.ask(123), lambda s: s.ask(["hi"]), lambda s: s.ask("hi", max_tokens=2.5),
    lambda s: s.ask("hi", stop="x"), lambda s: s.ask("hi", stop=[1]), lambda s: s.ask("hi", on_token=5),
    lambda s: s.say(123), lambda s: s.say("hi", role=None),
    lambda s: s.continue_tokens([1, 10**9]), lambda s: s.continue_tokens(["a"]),
])
def test_bad_arguments_leave_the_history_untouched(model, call):
    s = Scheduler(model).session(system_prompt=SYSTEM, sampler=GREEDY, n_ctx=96)
    before = [dict(m) for m in s.messages]
    with pytest.raises((TypeError, ValueError)):
        call(s)
    assert s.messages == before and not s.busy
    r = s.ask(QUESTIONS[0], max_tokens=2, ignore_eos=True)
    r.result()
    assert r.finish_reason == "length"


def test_preempting_a_batch_at_its_sampling_step_does_not_strand_a_member(model):
    """A higher-priority NPC that cuts in at any step (including between a member's forward and
    its sampling) never leaves the preempted NPC busy with nothing to run."""
    probe = Scheduler(model)
    p = probe.session(system_prompt=SYSTEM, sampler=GREEDY, n_ctx=96)
    p.ask(QUESTIONS[0], max_tokens=2, ignore_eos=True)
    total = 0
    while p.busy:
        total += probe.tick(0)
    for k in range(total):
        sched = Scheduler(model)
        low = sched.session(system_prompt=SYSTEM, sampler=GREEDY, n_ctx=96, priority=0)
        r_low = low.ask(QUESTIONS[0], max_tokens=2, ignore_eos=True)
        for _ in range(k):
            sched.tick(0)
        high = sched.session(sampler=GREEDY, n_ctx=96, priority=10)
        r_high = high.ask(QUESTIONS[1], max_tokens=1, ignore_eos=True)
        for _ in range(500):
            if r_low.done and r_high.done:
                break
            sched.tick(0)
        assert r_low.done and r_high.done, f"stranded after {k} steps"
