"""The NumPy ops of the cpu backend against naive float64 loops written straight from the math.
Fresh random inputs each run (the seed is printed on failure by the assertion message)."""

import math

import numpy as np
import pytest

from perro_pastor import cpu
from perro_pastor.config import Config, rope_inv_freq

SEED = np.random.SeedSequence().entropy


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


def test_rmsnorm_matches_formula(rng):
    x = rng.standard_normal((3, 577))
    w = rng.standard_normal(577)
    out = cpu.rmsnorm(x, w, 1e-5)
    for t in range(3):
        scale = 1 / math.sqrt(sum(v * v for v in x[t]) / 577 + 1e-5)
        np.testing.assert_allclose(out[t], x[t] * scale * w, rtol=1e-12, err_msg=f"seed {SEED}")


@pytest.mark.parametrize("rope_dim", [64, 32])
def test_rope_rotates_adjacent_pairs(rng, rope_dim):
    T, H, hs = 5, 3, 64
    x = rng.standard_normal((T, H, hs))
    positions = rng.integers(0, 4000, T)
    inv_freq = 10000.0 ** (-np.arange(0, rope_dim, 2) / rope_dim)
    out = cpu.rope(x, positions, inv_freq)
    for t in range(T):
        for h in range(H):
            for i in range(hs // 2):
                z = complex(x[t, h, 2 * i], x[t, h, 2 * i + 1])
                if 2 * i < rope_dim:
                    z *= complex(math.cos(positions[t] * inv_freq[i]), math.sin(positions[t] * inv_freq[i]))
                assert out[t, h, 2 * i] == pytest.approx(z.real, abs=1e-9), f"seed {SEED}"
                assert out[t, h, 2 * i + 1] == pytest.approx(z.imag, abs=1e-9), f"seed {SEED}"


def naive_attention(q, k_cache, v_cache, pos0, window):
    T, H, hs = q.shape
    group = H // k_cache.shape[1]
    out = np.zeros_like(q)
    for t in range(T):
        p = pos0 + t
        for h in range(H):
            keys = [j for j in range(p + 1) if not window or p - j < window]
            scores = [float(q[t, h] @ k_cache[j, h // group]) / math.sqrt(hs) for j in keys]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            out[t, h] = sum(w / total * v_cache[j, h // group] for w, j in zip(weights, keys))
    return out


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (9, 3), (8, 1)])
@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("T", [4, 1])
def test_attention_gqa_causal(rng, n_heads, n_kv_heads, window, T):
    hs, pos0, S = 16, 5, 12
    q = rng.standard_normal((T, n_heads, hs))
    k = rng.standard_normal((S, n_kv_heads, hs))
    v = rng.standard_normal((S, n_kv_heads, hs))
    got = cpu.attention(q, k.transpose(1, 0, 2).copy(), v.transpose(1, 0, 2).copy(), pos0, window)
    np.testing.assert_allclose(got, naive_attention(q, k, v, pos0, window), rtol=1e-10, atol=1e-12,
                               err_msg=f"seed {SEED}")


def test_swiglu(rng):
    a, b = rng.standard_normal((2, 50))
    np.testing.assert_allclose(cpu.swiglu(a, b), [x / (1 + math.exp(-x)) * y for x, y in zip(a, b)], rtol=1e-12)


def llama_config(**changes):
    base = {"general.architecture": "llama", "llama.embedding_length": 256, "llama.block_count": 2,
            "llama.feed_forward_length": 512, "llama.attention.head_count": 4,
            "llama.attention.head_count_kv": 2, "llama.context_length": 128, "llama.vocab_size": 100,
            "llama.rope.freq_base": 500000.0}
    base.update(changes)
    return Config.from_metadata(base, "test.gguf")


def test_llama3_rope_scaling_bands():
    cfg = llama_config(**{"llama.rope.scaling.type": "llama3", "llama.rope.scaling.factor": 8.0,
                          "llama.rope.scaling.original_context_length": 8192})
    plain = rope_inv_freq(llama_config())
    scaled = rope_inv_freq(cfg)
    wavelen = 2 * math.pi / plain
    # short wavelengths are untouched, long ones slowed by exactly the factor, the band blended
    np.testing.assert_array_equal(scaled[wavelen < 8192 / 4], plain[wavelen < 8192 / 4])
    np.testing.assert_allclose(scaled[wavelen > 8192], plain[wavelen > 8192] / 8)
    middle = (wavelen >= 2048) & (wavelen <= 8192)
    assert np.all((scaled[middle] <= plain[middle]) & (scaled[middle] >= plain[middle] / 8))


def test_rope_freq_factors_tensor_divides():
    cfg = llama_config()
    factors = np.linspace(1, 8, cfg.rope_dim // 2)
    np.testing.assert_allclose(rope_inv_freq(cfg, factors), rope_inv_freq(cfg) / factors)


@pytest.mark.parametrize("rope_dim", [64, 32])
def test_neox_rope_rotates_each_half_with_its_partner(rng, rope_dim):
    """GPT-NeoX's layout (qwen, gemma): x[i] turns with x[i + rope_dim/2]; the rest passes."""
    from perro_pastor.cpu_ops import apply_rope_neox
    T, H, hs = 4, 2, 64
    x = rng.standard_normal((T, H, hs))
    positions = rng.integers(0, 4000, T)
    inv_freq = 1e6 ** (-np.arange(0, rope_dim, 2) / rope_dim)
    out = apply_rope_neox(x, cpu.rope_rotation(positions, inv_freq, np.float64))
    half = rope_dim // 2
    for t in range(T):
        for h in range(H):
            for i in range(half):
                angle = positions[t] * inv_freq[i]
                a, b = x[t, h, i], x[t, h, i + half]
                want = (a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle))
                np.testing.assert_allclose((out[t, h, i], out[t, h, i + half]), want, rtol=1e-9, atol=1e-12,
                                           err_msg=f"seed {SEED}")
            np.testing.assert_array_equal(out[t, h, rope_dim:], x[t, h, rope_dim:])


def test_geglu_and_softcap_match_their_formulas(rng):
    from perro_pastor.cpu_ops import geglu, softcap
    a, b = rng.standard_normal(50) * 3, rng.standard_normal(50)
    gelu = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in a]
    np.testing.assert_allclose(geglu(a, b), np.array(gelu) * b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(softcap(a * 20, 30.0), [30 * math.tanh(v * 20 / 30) for v in a], rtol=1e-12)
