"""argmax.comp and sample.comp: the token id is chosen on the GPU.

argmax is exact (ties -> lowest id, as np.argmax). The sampler uses its own RNG stream, so it is
checked by the distribution it draws from: every draw lies in the set the cpu Sampler would keep,
and the frequencies over 2000 draws match the cpu Sampler's probabilities within 5 standard
errors (+0.005 for f32 rounding of the thresholds).
"""

from __future__ import annotations

import numpy as np
import pytest

from perro_pastor.errors import BackendError
from perro_pastor.gl.buffers import f32_buffer, i32_buffer, read_i32
from perro_pastor.gl.context import assert_no_gl_error
from perro_pastor.sampling import Sampler, SamplerSettings, apply_repetition_penalty

from gl_helpers import glctx, kernels  # noqa: F401


@pytest.mark.parametrize("n", [1, 2047, 2048, 49152, 50001])
def test_argmax(glctx, kernels, n):  # noqa: F811
    rng = np.random.default_rng(n)
    logits = rng.standard_normal(n).astype(np.float32)
    logits[rng.integers(0, n, 2)] = 9.0  # a tie: the lower id wins
    tokens = i32_buffer(glctx, np.full(4, -1, np.int32))
    kernels.argmax(tokens, f32_buffer(glctx, logits), n, out_index=2)
    assert read_i32(tokens, 4).tolist() == [-1, -1, int(np.argmax(logits)), -1]
    assert_no_gl_error(glctx)


def expected_probs(logits: np.ndarray, s: SamplerSettings, recent: list[int]) -> np.ndarray:
    """The distribution cpu Sampler.sample draws from (its filters, without the draw)."""
    logits = logits.astype(np.float64)
    for token, bias in s.logit_bias:
        logits[token] += bias
    logits = apply_repetition_penalty(logits, recent, s.repeat_penalty)
    order = np.argsort(-logits, kind="stable")
    if s.top_k:
        order = order[: s.top_k]
    cand = logits[order]
    probs = np.exp(cand - cand[0])
    probs /= probs.sum()
    if s.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), s.top_p)) + 1
        order, cand, probs = order[:keep], cand[:keep], probs[:keep]
    if s.min_p > 0:
        keep = probs >= s.min_p * probs[0]
        order, cand = order[keep], cand[keep]
    p = np.exp((cand - cand[0]) / s.temperature)
    out = np.zeros(len(logits))
    out[order] = p / p.sum()
    return out


SETTINGS = [
    SamplerSettings(temperature=0.7, top_k=10, top_p=0.9, min_p=0.05),
    SamplerSettings(temperature=1.3, top_k=0, top_p=1.0, min_p=0.0),
    SamplerSettings(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0),
    SamplerSettings(temperature=0.9, top_k=6, top_p=1.0, min_p=0.2, repeat_penalty=1.5),
    # a bias before the penalty: a banned token, a raised one, the penalized top one lowered
    SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.3,
                    logit_bias={5: 2.0, 7: -np.inf, 17: -0.5}),
]


@pytest.mark.parametrize("s", SETTINGS, ids=range(len(SETTINGS)))
def test_sample_distribution_matches_cpu_sampler(glctx, kernels, s):  # noqa: F811
    rng = np.random.default_rng(11)
    n, draws = 40, 2000
    logits = (rng.standard_normal(n) * 1.5).astype(np.float32)
    recent = [int(np.argmax(logits)), 3, 3, 17]
    want = expected_probs(logits, s, recent)
    tokens = i32_buffer(glctx, np.array(recent + [0] * draws, np.int32))
    lb = f32_buffer(glctx, logits)
    for step in range(draws):
        lb.write(logits.tobytes())  # the penalty edits logits in place
        kernels.sample(tokens, lb, n, out_index=len(recent) + step, seed=1234, step=step,
                       temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                       repeat_penalty=s.repeat_penalty, recent_begin=0, recent_count=len(recent),
                       logit_bias=s.logit_bias)
    got = np.bincount(read_i32(tokens)[len(recent):], minlength=n) / draws
    assert set(np.flatnonzero(got)) <= set(np.flatnonzero(want)), "drew a token the cpu sampler filters out"
    tol = 5 * np.sqrt(want * (1 - want) / draws) + 0.005
    assert (np.abs(got - want) <= tol).all(), f"max freq error {np.abs(got - want).max():.4f}"
    assert_no_gl_error(glctx)


def test_sample_is_reproducible_and_greedy_at_zero_temperature(glctx, kernels):  # noqa: F811
    rng = np.random.default_rng(2)
    n = 49152
    logits = rng.standard_normal(n).astype(np.float32) * 2
    top = int(np.argmax(logits))
    tokens = i32_buffer(glctx, np.array([top, 0, 0, 0, 0], np.int32))
    lb = f32_buffer(glctx, logits)
    for out, step in [(1, 5), (2, 5), (3, 6)]:
        lb.write(logits.tobytes())
        kernels.sample(tokens, lb, n, out_index=out, seed=99, step=step, temperature=1.5, top_k=0, top_p=1.0,
                       min_p=0.0)
    ids = read_i32(tokens, 5)
    assert ids[1] == ids[2]  # same seed and step
    # greedy with a penalty on the top token: the cpu Sampler picks the same id
    lb.write(logits.tobytes())
    kernels.sample(tokens, lb, n, out_index=4, seed=0, step=0, temperature=0.0, repeat_penalty=50.0,
                   recent_begin=0, recent_count=1)
    cpu_id = Sampler(SamplerSettings(temperature=0.0, repeat_penalty=50.0)).sample(logits, [top])
    assert read_i32(tokens, 5)[4] == cpu_id != top
    with pytest.raises(BackendError, match="top_p=0"):
        kernels.sample(tokens, lb, n, out_index=0, seed=0, step=0, top_p=0)
    assert_no_gl_error(glctx)
