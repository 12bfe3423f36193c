"""The scheduler: frame budgets under an injected clock, priorities, preemption, jobs, asyncio."""

import asyncio

import time

import pytest

from perro_pastor.sampling import GREEDY
from perro_pastor.scheduler import Scheduler

from runtime_model import small_model


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def costly_steps(clock, costs, log, name):
    for c in costs:
        clock.now += c / 1000
        log.append(name)
        yield
    return name.upper()


def test_budget_with_injected_clock():
    clock = FakeClock()
    sched = Scheduler(model=None, clock=clock)
    log = []
    sched.submit(costly_steps(clock, [1] * 12, log, "a"))
    assert sched.tick(4) == 4 and sched.tick_ms[-1] == 4  # 1 ms steps fill a 4 ms budget
    sched.jobs.clear()
    sched.submit(costly_steps(clock, [3] * 4, log, "b"), name="b")
    assert sched.tick(4) == 1  # unknown cost: runs; then 3 + 3 > 4 would overrun: stop
    assert sched.tick(4) == 1 and sched.tick_ms[-1] == 3
    sched.jobs.clear()
    sched.submit(costly_steps(clock, [10] * 3, log, "c"), name="c")
    assert sched.tick(4) == 1 and sched.tick_ms[-1] == 10  # one step never splits: the max tick


def test_jobs_by_priority_and_results():
    clock = FakeClock()
    sched = Scheduler(model=None, clock=clock)
    log = []
    low = sched.submit(costly_steps(clock, [1, 1], log, "low"), priority=0, name="low")
    high = sched.submit(costly_steps(clock, [1, 1], log, "high"), priority=5, name="high")

    def broken():
        yield
        raise OSError("disk gone")

    bad = sched.submit(broken(), priority=-1, name="bad")
    while sched.jobs:
        sched.tick(100)
    assert log == ["high", "high", "low", "low"]
    assert high.result == "HIGH" and low.result == "LOW"
    assert isinstance(bad.error, OSError) and bad.done


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_model(tmp_path_factory)


class SteppedModel:
    """The real model, but every forward sub-step advances a fake clock by ``step_ms``."""

    def __init__(self, model, clock, step_ms):
        self.__dict__.update(model.__dict__)
        real, self.transformer = model.transformer, self

        def forward_steps(segments, *a, **k):
            gen = real.forward_steps(segments, *a, **k)
            while True:
                clock.now += step_ms / 1000
                try:
                    next(gen)
                except StopIteration as done:
                    return done.value
                yield

        self.forward_steps = forward_steps
        for name in ("new_cache", "release_cache", "export_kv", "import_kv", "poll", "name"):
            setattr(self, name, getattr(real, name))


def test_real_batches_respect_the_budget_with_injected_clock(model):
    clock = FakeClock()
    sched = Scheduler(SteppedModel(model, clock, step_ms=1.5), clock=clock)
    replies = [sched.session(sampler=GREEDY, n_ctx=64).ask(q, max_tokens=4, ignore_eos=True)
               for q in ("Hi", "Hello", "Hey", "Yo")]
    while not all(r.done for r in replies):
        sched.tick(4)
    # steps cost 1.5 ms (sampling ~0 on the fake clock): a tick runs at most 2 steps after warm-up
    assert max(sched.tick_ms[1:]) <= 4 and max(sched.tick_ms) <= 4 + 1.5
    assert all(len(r.token_ids) == 4 for r in replies)


def test_on_screen_speaker_preempts_background_chatter(model):
    sched = Scheduler(model)
    alone = sched.session(sampler=GREEDY, n_ctx=64)
    ref = alone.ask("The weather today", max_tokens=6, ignore_eos=True)
    ref.result()
    sched = Scheduler(model)
    chatter = sched.session(sampler=GREEDY, n_ctx=64, priority=0)
    speaker = sched.session(sampler=GREEDY, n_ctx=64, priority=10)
    order = []
    bg = chatter.ask("The weather today", max_tokens=6, ignore_eos=True, on_token=lambda t: order.append("bg"))
    while len(bg.token_ids) < 2:
        sched.tick(0)
    sched.tick(0)  # a background batch is now in flight
    assert sched._batch is not None and speaker not in sched._batch_members
    fg = speaker.ask("Halt!", max_tokens=2, ignore_eos=True, on_token=lambda t: order.append("fg"))
    sched.tick(0)
    assert speaker in sched._batch_members  # the background batch was dropped for the speaker
    fg.result()
    bg.result()
    assert bg.token_ids == ref.token_ids  # preemption lost nothing and corrupted nothing
    assert order.index("fg") <= 3


def test_asyncio_path(model):
    sched = Scheduler(model)
    a = sched.session(sampler=GREEDY, n_ctx=64)
    b = sched.session(sampler=GREEDY, n_ctx=64)

    async def main():
        streamed = []
        ra = a.ask("Hello", max_tokens=3, ignore_eos=True)
        rb = b.ask("Hello", max_tokens=3, ignore_eos=True)
        async for piece in ra:
            streamed.append(piece)
        text_b = await rb
        sched._driver.cancel()
        return "".join(streamed), ra.text, text_b

    streamed, text_a, text_b = asyncio.run(main())
    assert streamed == text_a == text_b and text_a

    async def again():  # a second event loop (the first one's driver task died with it)
        return await a.ask("Bye", max_tokens=2, ignore_eos=True)

    assert asyncio.run(again())


def test_tick_without_work_returns_at_once(model):
    sched = Scheduler(model)
    sched.session(sampler=GREEDY, n_ctx=64)
    assert sched.tick(4) == 0 and sched.idle()


def test_full_batch_still_takes_a_new_speakers_prefill(model):
    sched = Scheduler(model, max_batch=2)
    chatter = [sched.session(sampler=GREEDY, n_ctx=64) for _ in range(2)]
    bg = [s.ask("Hello", max_tokens=8, ignore_eos=True) for s in chatter]
    while not all(r.token_ids for r in bg):
        sched.tick(1)  # one step per tick, so the chatter is mid-reply, whatever the machine's speed
    fg = sched.session(sampler=GREEDY, n_ctx=64, priority=5).ask("Halt!", max_tokens=1, ignore_eos=True)
    while not fg.done:
        sched.tick(1)  # one step per tick: a long budget would let the chatter finish in the same tick
    assert not any(r.done for r in bg)  # the speaker did not wait for the chatter to finish


def test_runtime_report_keys_and_sanity(tmp_path_factory):
    """`perro-pastor bench --sessions` figures (issue 4's keys), on the small cpu model: a real
    run, so every number must be positive and consistent with the others."""
    from perro_pastor.runtime_bench import runtime_report
    row = runtime_report(small_model(tmp_path_factory), sessions=3, budget_ms=4.0, n_tokens=3, rounds=2)
    for key in ("tick_ms_p50", "tick_ms_p99", "tick_ms_max", "aggregate_tok_s", "per_session_tok_s",
                "sessions", "budget_ms", "aggregate_tok_s_1_session", "batch_speedup"):
        assert key in row, key
    assert row["sessions"] == 3 and row["budget_ms"] == 4.0 and row["rounds"] == 2
    assert 0 < row["tick_ms_p50"] <= row["tick_ms_p99"] <= row["tick_ms_max"]
    assert row["aggregate_tok_s"] > 0 and row["aggregate_tok_s_1_session"] > 0
    assert abs(row["per_session_tok_s"] * 3 - row["aggregate_tok_s"]) < 0.01 * row["aggregate_tok_s"] + 0.01
    assert row["batch_speedup"] == round(row["aggregate_tok_s"] / row["aggregate_tok_s_1_session"], 2)


def test_a_frame_paced_runtime_run_ticks_once_a_frame(tmp_path_factory):
    """--frame-ms: one tick per frame, the rest of the frame slept, as a game's loop would."""
    from perro_pastor.runtime_bench import run_runtime_bench
    start = time.perf_counter()
    row = run_runtime_bench(small_model(tmp_path_factory), 1, 4.0, 3, frame_ms=20.0)
    assert row["frame_ms"] == 20.0 and row["ticks"] >= 3
    assert time.perf_counter() - start >= row["ticks"] * 0.020


def test_remove_frees_the_cache_and_twice_is_refused(model):
    """remove() cancels the reply and frees the KV cache at once, also mid-batch (the other
    members finish); a second remove() is a clear ValueError."""
    sched = Scheduler(model)
    a = sched.session(sampler=GREEDY, n_ctx=64, name="a")
    b = sched.session(sampler=GREEDY, n_ctx=64, name="b")
    ra, rb = a.ask("Hi", max_tokens=3, ignore_eos=True), b.ask("Hello", max_tokens=3, ignore_eos=True)
    sched.tick(0)  # one step: the batch of both is in flight
    freed = []
    real_release = model.transformer.release_cache
    model.transformer.release_cache = lambda kv: freed.append(kv)
    try:
        kv = a.kv
        sched.remove(a)
    finally:
        model.transformer.release_cache = real_release
    assert freed == [kv] and ra.finish_reason == "cancelled" and a.kv is None
    assert rb.result() and rb.finish_reason == "length"
    with pytest.raises(ValueError, match="'a' is not on this scheduler"):
        sched.remove(a)


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), -1.0, "4", True])
def test_tick_refuses_a_budget_that_is_not_a_finite_number(model, budget):
    sched = Scheduler(model)
    with pytest.raises(ValueError, match="tick budget"):
        sched.tick(budget)
