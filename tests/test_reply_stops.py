"""Stop strings are bounded (length and count) and their per-token check stays cheap."""

import random
import time
from types import SimpleNamespace

import pytest

from perro_pastor.reply import MAX_STOP_CHARS, MAX_STOPS, Reply
from perro_pastor.scheduler import Scheduler

from runtime_model import small_model


class _Decoder:
    def feed(self, text):
        return text

    def flush(self):
        return ""


def fake_reply(stop):
    tokenizer = SimpleNamespace(stream_decoder=_Decoder)
    return Reply(SimpleNamespace(model=SimpleNamespace(tokenizer=tokenizer)), 8, stop, None, False)


@pytest.mark.parametrize("stop", [["x" * 20000], ["x" * (MAX_STOP_CHARS + 1)],
                                  [str(i) for i in range(1, MAX_STOPS + 2)]])
def test_too_long_or_too_many_stop_strings_are_refused(stop):
    with pytest.raises(ValueError, match="stop string"):
        fake_reply(stop)


def test_the_limits_themselves_are_accepted_and_cheap():
    r = fake_reply(["y" * (MAX_STOP_CHARS - 1) + "z"] + ["q" * MAX_STOP_CHARS] * (MAX_STOPS - 1))
    t0 = time.perf_counter()
    for _ in range(200):
        assert not r._feed("y" * 7)
    assert time.perf_counter() - t0 < 1.0
    assert r.text.startswith("y") and len(r._held) == MAX_STOP_CHARS - 1


def old_hold(buf, stops):
    return max((k for s in stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)


def test_held_back_text_is_what_the_old_rule_held():
    rng = random.Random(5)
    for _ in range(3000):
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 3))]
        r = fake_reply(stops)
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 8)))
        buf = r._held + text
        if any(s in buf for s in stops):
            continue
        r._feed(text)
        assert len(r._held) == old_hold(buf, stops), (stops, text)


def test_ask_refuses_a_huge_stop_string(tmp_path_factory):
    s = Scheduler(small_model(tmp_path_factory)).session(system_prompt="Bob.", n_ctx=96)
    with pytest.raises(ValueError, match="stop string of 20000 characters"):
        s.ask("hi", max_tokens=2, stop=["x" * 20000])
