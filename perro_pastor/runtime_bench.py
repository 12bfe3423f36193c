"""`perro-pastor bench --sessions N --budget-ms B`: NPCs generating under a per-frame budget, and
save/restore speed.

Ticks are called back to back (a game would render between them), or once per ``frame_ms``
frame with the rest of the frame slept, as a game at that frame rate would; the tick time is what
the frame pays. Prefill is done before measuring, so the figures are for the decode phase.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .sampling import GREEDY, SamplerSettings
from .scheduler import Scheduler

PROMPTS = ["Tell me about the old mill.", "Where is the blacksmith?", "Any news from the north?",
           "What are you selling?", "Have you seen my sheep?", "Is it going to rain?",
           "Who rules this town?", "Sing me a song."]


def run_runtime_bench(model, sessions: int, budget_ms: float, n_tokens: int, adapters: tuple = (),
                      frame_ms: float = 0.0) -> dict:
    """``sessions`` NPCs (each with the LoRA ``adapters``) each generate ``n_tokens`` while
    ``tick(budget_ms)`` is called back to back, or once per frame of ``frame_ms``. Returns
    tick-time percentiles and tokens per second (aggregate and per NPC)."""
    sched = Scheduler(model)
    settings = SamplerSettings(temperature=0.8, top_k=40, repeat_penalty=1.1)
    npcs = [sched.session(system_prompt="You are a villager in a small town.", sampler=settings,
                          seed=i, n_ctx=256, name=f"npc{i}", lora=adapters or None) for i in range(sessions)]
    replies = [npc.ask(PROMPTS[i % len(PROMPTS)], max_tokens=n_tokens + 1, ignore_eos=True)
               for i, npc in enumerate(npcs)]
    while any(len(r.token_ids) == 0 for r in replies):  # prefill + first token, not measured
        sched.tick(1)  # one step per tick: a long tick would also eat the decode being measured
    sched.tick_ms.clear()
    start_tokens = sum(len(r.token_ids) for r in replies)
    start = time.perf_counter()
    while not all(r.done for r in replies):
        frame_start = time.perf_counter()
        sched.tick(budget_ms)
        if frame_ms:  # the game draws in the rest of the frame
            time.sleep(max(0.0, frame_ms / 1000.0 - (time.perf_counter() - frame_start)))
    wall = time.perf_counter() - start
    ticks = np.array(sched.tick_ms or [0.0])
    generated = sum(len(r.token_ids) for r in replies) - start_tokens
    can_sample = getattr(model.transformer, "can_sample", None)
    return {
        "sessions": sessions, "budget_ms": budget_ms, "frame_ms": frame_ms or None,
        "backend": model.backend, "ticks": len(ticks),
        # where each next token was drawn: by the backend (gl: on the GPU, the id read back) or
        # from logits read back to the host
        "sampling": "gpu" if can_sample is not None and can_sample(settings) else "host",
        "tick_ms_p50": round(float(np.percentile(ticks, 50)), 3),
        "tick_ms_p99": round(float(np.percentile(ticks, 99)), 3),
        "tick_ms_max": round(float(ticks.max()), 3),
        "aggregate_tok_s": round(generated / wall, 3),
        "per_session_tok_s": round(generated / wall / sessions, 3),
    }


def run_restore_bench(model, history_tokens: int = 200) -> dict:
    """Time to the first new token: restoring a saved NPC vs re-prefilling its history."""
    sched = Scheduler(model)
    npc = sched.session(system_prompt="You are a villager.", sampler=GREEDY, n_ctx=512)
    npc.say("word " * (history_tokens - 30))
    npc.ask(max_tokens=4, ignore_eos=True).result()
    out = {"history_tokens": npc.n_past}
    for dtype in ("f16", "q8"):
        out[f"bytes_{dtype}"] = len(npc.save(dtype))
    data = npc.save("f16")

    def first_token(make):
        start = time.perf_counter()
        s = make()
        r = s.ask("And then?", max_tokens=1, ignore_eos=True)
        while not r.token_ids:
            s.scheduler.tick(1000)
        return time.perf_counter() - start

    def reprefill():
        s = Scheduler(model).session(system_prompt="You are a villager.", sampler=GREEDY, n_ctx=512)
        for m in npc.messages[1:]:
            s.say(m["content"], m["role"])
        return s

    out["restore_first_token_s"] = round(min(first_token(lambda: Scheduler(model).restore(data)) for _ in range(3)), 4)
    out["reprefill_first_token_s"] = round(min(first_token(reprefill) for _ in range(3)), 4)
    out["speedup"] = round(out["reprefill_first_token_s"] / out["restore_first_token_s"], 2)
    return out


def runtime_report(model, sessions: int, budget_ms: float, n_tokens: int, restore: bool = False,
                   rounds: int = 3, adapters: tuple = (), frame_ms: float = 0.0) -> dict:
    """What `perro-pastor bench --sessions` prints: a warm-up, then ``rounds`` rounds of the N-NPC
    run and the same run with one NPC, interleaved so drift in the machine's load hits both. Ticks:
    the median p50 and the worst p99 and max of the N-NPC rounds; throughput: the round with the
    median aggregate tok/s; the batching ratio: of the median throughputs. Optionally restore vs
    re-prefill."""
    run_runtime_bench(model, 1, 1000, 2)  # warm-up: dequantize/upload weights, compile programs
    many, single = [], []
    for _ in range(rounds):
        many.append(run_runtime_bench(model, sessions, budget_ms, n_tokens, adapters, frame_ms))
        if sessions != 1:
            single.append(run_runtime_bench(model, 1, budget_ms, n_tokens, adapters, frame_ms)["aggregate_tok_s"])
    many.sort(key=lambda r: r["aggregate_tok_s"])
    row = dict(many[len(many) // 2], rounds=rounds,
               tick_ms_p50=statistics.median(r["tick_ms_p50"] for r in many),
               tick_ms_p99=max(r["tick_ms_p99"] for r in many),
               tick_ms_max=max(r["tick_ms_max"] for r in many))
    if single:
        one = statistics.median(single)
        row["aggregate_tok_s_1_session"] = one
        row["batch_speedup"] = round(row["aggregate_tok_s"] / one, 2) if one else None
    if restore:
        row["restore"] = run_restore_bench(model)
    return row
