"""The compiled attention kernels (perro_pastor/cpu_attention.py) against the NumPy attention in
float64 (cpu_ops.attention), and their vectorized exponential against NumPy's. Fresh random
inputs every run; the seed is in the message."""

import numpy as np
import pytest

pytest.importorskip("numba")

from perro_pastor import cpu_attention, cpu_ops  # noqa: E402
from test_quant import fresh_rng  # noqa: E402

f64 = lambda a: a.astype(np.float64)  # noqa: E731


def test_the_vectorized_exponential_is_within_float32_rounding_of_numpy_s():
    rng, seed = fresh_rng()
    x = np.concatenate([-rng.exponential(3.0, 2000), rng.uniform(-87, 0, 2000), [0.0, -1e-8, -86.99]]).astype(np.float32)
    got = np.array([cpu_attention.exp_nonpositive(v) for v in x])
    want = np.exp(f64(x))
    assert np.max(np.abs(got - want) / want) < 4e-7, f"seed={seed}"
    assert cpu_attention.exp_nonpositive(np.float32(0)) == 1.0
    # far below float32's range: tiny and never negative; NaN stays NaN
    assert 0 <= cpu_attention.exp_nonpositive(np.float32(-1000)) < 1e-37
    assert np.isnan(cpu_attention.exp_nonpositive(np.float32(np.nan)))


@pytest.mark.parametrize("n_heads,n_kv_heads", [(9, 3), (4, 1), (8, 8), (6, 2)])
@pytest.mark.parametrize("window", [0, 50])
def test_one_token_attention_equals_the_float64_reference(n_heads, n_kv_heads, window):
    """Both kernels, at positions on either side of where ``attention`` switches between them
    (ONE_TOKEN_MIN_POSITIONS), with and without a sliding window, for several GQA ratios."""
    rng, seed = fresh_rng()
    hs, n_ctx = 32, 400
    keys = rng.standard_normal((n_kv_heads, n_ctx, hs)).astype(np.float32)
    values = rng.standard_normal((n_kv_heads, n_ctx, hs)).astype(np.float32)
    for pos in (0, 5, 17, cpu_attention.ONE_TOKEN_MIN_POSITIONS - 1, cpu_attention.ONE_TOKEN_MIN_POSITIONS, 399):
        q = (3 * rng.standard_normal((1, n_heads, hs))).astype(np.float32)  # peaked softmax too
        want = cpu_ops.attention(f64(q), f64(keys), f64(values), pos, window)
        for kernel in (cpu_attention.attention, cpu_attention.attention_one_token, cpu_attention.attention_tokens):
            got = kernel(q, keys, values, pos, window)
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 2e-5, f"{kernel.__name__} pos={pos} window={window}: {err:.2e} seed={seed}"


def test_several_query_tokens_equal_the_float64_reference():
    rng, seed = fresh_rng()
    keys = rng.standard_normal((2, 64, 16)).astype(np.float32)
    values = rng.standard_normal((2, 64, 16)).astype(np.float32)
    q = rng.standard_normal((5, 6, 16)).astype(np.float32)
    for pos0, window in ((0, 0), (30, 0), (30, 8)):
        want = cpu_ops.attention(f64(q), f64(keys), f64(values), pos0, window)
        got = cpu_attention.attention(q, keys, values, pos0, window)
        assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max(), f"pos0={pos0} seed={seed}"


def test_a_nan_query_gives_nan_as_numpy_does():
    """A broken model's NaN must not come out as finite numbers (the exponential's clamp lets it
    through)."""
    rng, _ = fresh_rng()
    keys = rng.standard_normal((3, 300, 16)).astype(np.float32)
    q = rng.standard_normal((1, 9, 16)).astype(np.float32)
    q[0, 4, 2] = np.nan
    for kernel in (cpu_attention.attention_one_token, cpu_attention.attention_tokens):
        out = kernel(q, keys, keys, 250, 0)
        assert np.isnan(out[0, 4]).all() and np.isfinite(out[0, 0]).all(), kernel.__name__


@pytest.mark.parametrize("n_kv_heads", [1, 2, 3, 4, 8, 32])
def test_the_parts_give_every_core_as_many_work_items(n_kv_heads):
    parts = cpu_attention.parts_per_head(n_kv_heads, 1000)
    assert parts >= 1 and (n_kv_heads * parts) % cpu_attention.ITEMS_MULTIPLE == 0
    assert cpu_attention.parts_per_head(n_kv_heads, 20) * 8 <= 20 or cpu_attention.parts_per_head(n_kv_heads, 20) == 1
