"""Saves are untrusted input: bit flips are caught by the checksum, and a save forged with a valid
checksum but hostile fields is refused with one StateError naming the field, never a raw error,
never a session that later breaks ticking."""

import hashlib
import json
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perro_pastor import state
from perro_pastor.sampling import GREEDY
from perro_pastor.scheduler import Scheduler
from perro_pastor.session import ContextFullError
from perro_pastor.state import StateError

from runtime_model import small_model

SYSTEM = "You are Ana, a travelling merchant."


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_model(tmp_path_factory)


@pytest.fixture(scope="module")
def saved(model):
    s = Scheduler(model).session(system_prompt=SYSTEM, sampler=GREEDY, seed=3, n_ctx=64, name="ana")
    s.ask("Hi!", max_tokens=2, ignore_eos=True).result()
    data = s.save("q8")
    fields = json.loads(data[108:108 + struct.unpack_from("<I", data, 104)[0]])
    kv_bytes = data[108 + len(json.dumps(fields).encode()):]
    return data, fields, kv_bytes


def forge(model, fields, kv_bytes) -> bytes:
    """A save with these fields and a valid checksum (as a player who read state.py could make)."""
    blob = json.dumps(fields).encode()
    header = struct.pack("<6sH32s32s32sI", state.MAGIC, state.FORMAT_VERSION, state.model_hash(model),
                         state.adapter_hash(None), bytes(32), len(blob))
    data = bytearray(header + blob + kv_bytes)
    data[72:104] = hashlib.sha256(data).digest()
    return bytes(data)


def test_forge_round_trips(model, saved):
    data, fields, kv_bytes = saved
    assert forge(model, fields, kv_bytes) == data


def restore_and_tick(model, data):
    """Restore, then make sure ticking still works for it and for a bystander NPC."""
    sched = Scheduler(model)
    bystander = sched.session(system_prompt=SYSTEM, sampler=GREEDY, n_ctx=64)
    try:
        s = sched.restore(data)
    except StateError:
        assert sched.sessions == [bystander]
        return None
    replies = [bystander.ask("And you?", max_tokens=2, ignore_eos=True)]
    try:
        replies.append(s.ask("Hello again", max_tokens=2, ignore_eos=True))
    except ContextFullError:
        pass
    for _ in range(100):
        if all(r.done for r in replies):
            break
        sched.tick(1000)
    assert all(r.done for r in replies) and replies[0].finish_reason == "length"
    return s


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(bit=st.integers(min_value=0))
def test_every_single_bit_flip_is_refused(model, saved, bit):
    data = saved[0]
    bit %= len(data) * 8
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    sched = Scheduler(model)
    with pytest.raises(StateError):
        sched.restore(bytes(flipped))
    assert sched.sessions == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["high", "f16", "q8", "chatml", "error", "PCG64", "user"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8)

PATHS = [(k,) for k in state.FIELDS] + [
    ("messages", 0, "role"), ("messages", 0, "content"), ("messages", 0), ("tokens", 0), ("tokens", -1),
    ("settings", "top_k"), ("settings", "temperature"), ("settings", "logit_bias"), ("settings", "bogus"),
    ("rng", "state", "state"), ("rng", "state", "inc"), ("rng", "has_uint32"), ("rng", "uinteger"),
    ("rng", "bit_generator"), ("kv_shape", 2), ("kv_shape", 4)]


def edit(fields, path, value):
    fields = json.loads(json.dumps(fields))
    target = fields
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return fields


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(PATHS), value=JSON)
def test_forged_field_edits_are_refused_or_harmless(model, saved, path, value):
    _, fields, kv_bytes = saved
    restore_and_tick(model, forge(model, edit(fields, path, value), kv_bytes))


@pytest.mark.parametrize("path,value,match", [
    (("priority",), "high", "priority must be an int"),
    (("priority",), 1.5, "priority"),
    (("priority",), True, "priority"),
    (("n_ctx",), 10**30, "n_ctx"),
    (("n_ctx",), 0, "n_ctx"),
    (("n_past",), -1, "n_past"),
    (("tokens", 0), 10**9, "tokens"),
    (("tokens", 0), -5, "tokens"),
    (("messages",), [{"role": "user"}], "messages"),
    (("messages",), [{"role": "user", "content": "x"}] * 1000, "messages"),
    (("messages",), "hi", "messages"),
    (("system_prompt",), "x" * (10 << 20), "over the"),
    (("system_prompt",), "x" * 200_000, "chars, over"),
    (("seed",), -1, "seed"),
    (("rng", "state", "state"), 2**200, "rng"),
    (("rng",), {}, "rng"),
    (("kv_dtype",), "f64", "kv_dtype"),
    (("kv_shape",), [2, 2, 1, 1, 1], "kv_shape"),
    (("settings", "top_k"), 2.5, "top_k"),
    (("settings", "temperature"), 1e400, "Infinity"),
    (("settings", "bogus"), 1, "bogus"),
    (("name",), ["a"], "name"),
])
def test_hostile_fields_name_the_field(model, saved, path, value, match):
    _, fields, kv_bytes = saved
    sched = Scheduler(model)
    start = time.perf_counter()
    with pytest.raises(StateError, match=match):
        sched.restore(forge(model, edit(fields, path, value), kv_bytes))
    assert sched.sessions == [] and time.perf_counter() - start < 2


@pytest.mark.parametrize("blob", [b"[" * 100000 + b"]" * 100000, b'{"a": NaN}', b'{"n": ' + b"9" * 5000 + b"}",
                                  b"\xff\xfe", b"[]", b"null"])
def test_unparsable_fields_are_state_errors(model, saved, blob):
    data = bytearray(struct.pack("<6sH32s32s32sI", state.MAGIC, state.FORMAT_VERSION, state.model_hash(model),
                                 state.adapter_hash(None), bytes(32), len(blob)) + blob)
    data[72:104] = hashlib.sha256(data).digest()
    with pytest.raises(StateError):
        Scheduler(model).restore(bytes(data))


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 1e30])
def test_kv_that_is_not_finite_is_refused(model, saved, value):
    _, fields, _ = saved
    kv = np.zeros((2, model.config.n_layers, fields["n_past"], model.config.n_kv_heads, model.config.head_size),
                  np.float32)
    kv[1, 0, 0, 0, 3] = value
    with pytest.raises(StateError, match="KV values"):
        Scheduler(model).restore(forge(model, {**fields, "kv_dtype": "f32"}, state.encode_kv(kv, "f32")))


def test_a_priority_high_save_never_breaks_ticking(model, saved):
    _, fields, kv_bytes = saved
    sched = Scheduler(model)
    other = sched.session(system_prompt=SYSTEM, sampler=GREEDY, n_ctx=64)
    with pytest.raises(StateError):
        sched.restore(forge(model, {**fields, "priority": "high"}, kv_bytes))
    r = other.ask("Hello", max_tokens=2, ignore_eos=True)
    r.result()
    assert r.finish_reason == "length"
