"""The sampler: greedy, each filter's effect, seeded determinism."""

import numpy as np
import pytest

from perro_pastor.sampling import GREEDY, Sampler, SamplerSettings, apply_repetition_penalty


@pytest.fixture
def logits():
    return np.random.default_rng().standard_normal(1000) * 3


def test_greedy_is_argmax(logits):
    assert Sampler(GREEDY).sample(logits) == int(np.argmax(logits))


def test_same_seed_same_tokens(logits):
    settings = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [Sampler(settings, seed=42).sample(logits) for _ in range(3)]
    runs = [[s.sample(logits) for _ in range(20)] for s in (Sampler(settings, 42), Sampler(settings, 42))]
    assert runs[0] == runs[1] and len(set(a)) == 1


def test_top_k_only_draws_from_top(logits):
    top = set(np.argsort(-logits)[:5].tolist())
    s = Sampler(SamplerSettings(temperature=5.0, top_k=5, top_p=1.0, min_p=0.0), seed=1)
    assert {s.sample(logits) for _ in range(300)} <= top


def test_top_p_keeps_smallest_prefix_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplerSettings(temperature=1.0, top_k=0, top_p=0.75, min_p=0.0), seed=3)
    assert {s.sample(logits) for _ in range(500)} == {0, 1}


def test_min_p_drops_unlikely():
    logits = np.log(np.array([0.6, 0.3, 0.05, 0.05]))
    s = Sampler(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2), seed=3)
    assert {s.sample(logits) for _ in range(500)} == {0, 1}


def test_frequencies_follow_temperature_scaled_softmax():
    logits = np.array([1.0, 0.0, -1.0])
    s = Sampler(SamplerSettings(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0), seed=5)
    counts = np.bincount([s.sample(logits) for _ in range(20000)], minlength=3) / 20000
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum()
    np.testing.assert_allclose(counts, expected, atol=0.015)


def test_repetition_penalty_moves_both_signs_down():
    logits = np.array([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)
    np.testing.assert_array_equal(out, [1.0, -4.0, 1.0])
    assert Sampler(SamplerSettings(temperature=0, repeat_penalty=4.0)).sample(logits, [0]) == 2


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(min_p=2), dict(repeat_penalty=0)])
def test_bad_settings_refused(bad):
    with pytest.raises(ValueError):
        SamplerSettings(**bad)


# -----------------------------------------------------------------------------
# the runtime's additions: typical, frequency/presence penalties, logit bias, hook, RNG state

from perro_pastor.sampling import apply_frequency_presence, entropy_adaptive_hook, top_candidates  # noqa: E402


def test_top_candidates_equals_stable_full_sort():
    rng = np.random.default_rng()
    logits = rng.integers(-5, 5, 5000).astype(np.float64)  # many ties
    for k in (1, 7, 100, 0):
        full = np.argsort(-logits, kind="stable")
        np.testing.assert_array_equal(top_candidates(logits, k), full[:k] if k else full)


def test_frequency_and_presence_penalties():
    out = apply_frequency_presence(np.zeros(4), [1, 1, 1, 2], frequency=0.5, presence=1.0)
    np.testing.assert_array_equal(out, [0.0, -2.5, -1.5, 0.0])


def test_logit_bias_bans_and_forces(logits):
    best = int(np.argmax(logits))
    assert Sampler(SamplerSettings(temperature=0, logit_bias={best: -np.inf})).sample(logits) != best
    s = Sampler(SamplerSettings(temperature=1.0, logit_bias={3: np.inf}), seed=1)
    assert {s.sample(logits) for _ in range(20)} == {3}


def test_typical_keeps_tokens_near_the_entropy():
    # entropy 1.280 nats; surprises 0.916, 1.204, 1.609, 2.303: closest are ids 1 then 2 (mass 0.5)
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    s = Sampler(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=0.45), seed=2)
    assert {s.sample(np.log(probs)) for _ in range(300)} == {1, 2}


def test_hook_can_pick_or_reshape():
    logits = np.array([0.0, 5.0, 1.0])
    assert Sampler(SamplerSettings(hook=lambda l, r, g: 2)).sample(logits) == 2
    sure = Sampler(SamplerSettings(temperature=5.0, top_k=0, top_p=1.0, min_p=0.0, hook=entropy_adaptive_hook()), 3)
    assert {sure.sample(np.array([0.0, 30.0, 1.0])) for _ in range(50)} == {1}  # confident: argmax


def test_rng_state_round_trip(logits):
    settings = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = Sampler(settings, seed=9)
    a.sample(logits)
    b = Sampler(settings)
    b.set_state(a.get_state())
    assert [a.sample(logits) for _ in range(10)] == [b.sample(logits) for _ in range(10)]


def test_a_backend_draw_request_peeks_the_seed_and_drew_moves_past_it():
    """A request for a backend's draw (gl: sample.comp) names the seed the RNG would draw next
    without taking it: a request whose batch is abandoned changes nothing; ``drew`` takes it."""
    s = Sampler(SamplerSettings(repeat_last_n=3), seed=3)
    first = s.request([5, 6, 7, 8])
    assert first.recent == (6, 7, 8) and s.request([1]).seed == first.seed  # peeked twice: the same
    s.drew()
    second = s.request([1])
    assert second.seed != first.seed
    again = Sampler(SamplerSettings(), seed=3)
    assert int(again.rng.integers(1 << 32)) == first.seed and again.request().seed == second.seed
