"""NPC state: save/restore/fork equality, KV encodings, refused mismatches."""

import numpy as np
import pytest

from perro_pastor.sampling import GREEDY, SamplerSettings
from perro_pastor.scheduler import Scheduler
from perro_pastor.state import FORMAT_VERSION, StateError, decode_kv, encode_kv

from runtime_model import small_model

SYSTEM = "You are Ana, a travelling merchant."
SAMPLED = SamplerSettings(temperature=1.0, top_k=20, top_p=0.95, min_p=0.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_model(tmp_path_factory)


@pytest.fixture(scope="module")
def talked(model):
    """An NPC after one exchange, with a seeded sampler (so the RNG state matters)."""
    s = Scheduler(model).session(system_prompt=SYSTEM, sampler=SAMPLED, seed=11, n_ctx=128, name="ana")
    s.ask("What do you have for sale?", max_tokens=4, ignore_eos=True).result()
    return s


def continue_with(s, text="How much?"):
    r = s.ask(text, max_tokens=5, ignore_eos=True)
    r.result()
    return r.token_ids


def test_restore_continues_exactly_as_never_saving(model, talked):
    data = talked.save("f32")
    twin = talked.fork()  # "never saved": the same NPC going on in memory
    restored = Scheduler(model).restore(data)
    assert restored.messages == talked.messages and restored.n_past == talked.n_past
    assert continue_with(restored) == continue_with(twin)


def test_f16_save_restores_same_greedy_tokens(model):
    s = Scheduler(model).session(system_prompt=SYSTEM, sampler=GREEDY, n_ctx=128)
    s.ask("Good morning!", max_tokens=3, ignore_eos=True).result()
    data = s.save()  # f16 by default
    restored = Scheduler(model).restore(data)
    assert continue_with(restored) == continue_with(s)


def test_fork_branches_a_dialogue(model, talked):
    a, b = talked.fork(), talked.fork()
    assert continue_with(a) == continue_with(b)  # same RNG state, same future
    c = talked.fork(seed=12345)
    continue_with(c, "Tell me about the road north.")
    assert c.messages[:-2] == talked.messages and a.messages != c.messages
    assert talked.messages[-1]["role"] == "assistant" and len(talked.messages) == 3  # untouched


@pytest.mark.parametrize("dtype,tol", [("f32", 0), ("f16", 1e-3), ("q8", 1e-2)])
def test_kv_encodings_round_trip(dtype, tol):
    kv = np.random.default_rng().standard_normal((2, 3, 5, 3, 64)).astype(np.float32)
    kv[0, 0, 0, 0] = 0  # an all-zero row must not divide by zero
    out = decode_kv(encode_kv(kv, dtype), dtype, kv.shape)
    scale = np.abs(kv).max(axis=-1, keepdims=True)
    assert np.all(np.abs(out - kv) <= tol * np.maximum(scale, 1))


def test_q8_is_about_half_of_f16(model, talked):
    f16, q8 = len(talked.save("f16")), len(talked.save("q8"))
    assert q8 < 0.6 * f16
    restored = Scheduler(model).restore(talked.save("q8"))
    assert restored.n_past == talked.n_past


def test_bytes_for_a_200_token_conversation(model):
    cfg = model.config
    s = Scheduler(model).session(system_prompt=SYSTEM, sampler=GREEDY, n_ctx=256)
    s.ask("word " * 180, max_tokens=1, ignore_eos=True).result()
    data = s.save()
    kv_bytes = 2 * cfg.n_layers * s.n_past * cfg.kv_dim * 2
    assert kv_bytes < len(data) < kv_bytes + 8192  # KV rows plus a few KB of history and RNG


def tamper(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def reseal(data: bytes) -> bytes:
    """``data`` with its checksum recomputed: an edit made by someone who knows the format."""
    import hashlib

    from perro_pastor.state import _CHECKSUM
    data = bytearray(data)
    data[_CHECKSUM] = bytes(32)
    data[_CHECKSUM] = hashlib.sha256(data).digest()
    return bytes(data)


def test_mismatches_are_refused(model, talked):
    data = talked.save()
    sched = Scheduler(model)
    with pytest.raises(StateError, match="magic"):
        sched.restore(tamper(data, 0, b"XXXX"))
    with pytest.raises(StateError, match=f"format version {FORMAT_VERSION + 1}"):
        sched.restore(tamper(data, 6, (FORMAT_VERSION + 1).to_bytes(2, "little")))
    with pytest.raises(StateError, match="checksum mismatch"):
        sched.restore(tamper(data, 8, bytes(8)))
    with pytest.raises(StateError, match="saved for model"):
        sched.restore(reseal(tamper(data, 8, bytes(8))))
    with pytest.raises(StateError, match="adapter"):
        sched.restore(data, lora="some-adapter")
    with pytest.raises(StateError, match="checksum mismatch"):
        sched.restore(data[:-10])
    with pytest.raises(StateError, match="KV section"):
        sched.restore(reseal(data[:-10]))
    with pytest.raises(StateError, match="format version 1 .before checksums"):
        sched.restore(tamper(data, 6, (1).to_bytes(2, "little")))
    with pytest.raises(StateError, match="too short"):
        sched.restore(data[:20])
    assert sched.sessions == []  # nothing half-restored


def test_save_while_generating_is_refused(model):
    s = Scheduler(model).session(sampler=GREEDY, n_ctx=64)
    s.ask("Hi", max_tokens=2)
    with pytest.raises(RuntimeError, match="generating"):
        s.save()
    s.cancel()


@pytest.mark.parametrize("edit", [
    lambda f: f["settings"].update(bogus=1),  # an option this build does not know
    lambda f: f.pop("system_prompt"),  # a field missing
    lambda f: f.update(n_ctx=10**9),  # more context than the model has
])
def test_hand_edited_fields_are_refused_as_state_errors(model, talked, edit):
    """A save whose bytes check out but whose fields do not make a session: one StateError, and
    the scheduler keeps no half-made session."""
    from perro_pastor import state

    saved = state.unpack(talked.save("f32"), state.model_hash(model), state.adapter_hash(None), "test")
    fields = {k: v for k, v in saved.fields.items() if k not in ("kv_dtype", "kv_shape")}
    edit(fields)
    data = state.pack(fields, saved.kv, "f32", state.model_hash(model), state.adapter_hash(None))
    sched = Scheduler(model)
    with pytest.raises(StateError, match="corrupt session fields"):
        sched.restore(data)
    assert sched.sessions == []
