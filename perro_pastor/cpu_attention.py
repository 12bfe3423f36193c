"""Attention over the KV cache for the compiled cpu kernels (numba).

Two kernels, one entry point (``attention``):

- **Several query tokens** (a short prompt pass, a few NPCs decoding together), and one token
  over fewer than ``ONE_TOKEN_MIN_POSITIONS``: each query head walks its keys and values, heads
  spread over the cores.
- **One query token over a longer context** (a decode step deep into an NPC's conversation):
  the cache is read once per key/value head, by all the query heads that share it
  (grouped-query attention: 3 per head in the default model), with software prefetch, and the
  visible positions are cut into parts so the cores get equal work even when the key/value
  heads do not divide among them. Each part keeps its own softmax max, sum and weighted values;
  a last serial step merges them (the split softmax of flash-decoding). Alone (the default
  model's shapes, 2 cores, cache cold): 1.5x the head-by-head kernel at 500 positions, 1.6-1.75x
  at 1,000; in the model, with the exponential below, decode 1.36-1.46x at 1,000 positions
  (docs/cpu_backend.md).

Both take their exponentials from a polynomial that LLVM vectorizes (``exp_nonpositive``);
NumPy's ``exp`` is a libm call per score.

Both are the compiled twins of ``cpu_ops.attention`` (NumPy), the float64 reference in the tests.
"""

from __future__ import annotations

import numpy as np

from .cpu_compile import PARALLEL, SERIAL, float_from_bits, njit, prange, prefetch

# e^r on |r| <= ln(2) / 2: its Taylor series to degree 7 (truncation below 5e-9, under float32's
# rounding). ln 2 in two parts (Cody-Waite): n * _LN2_HIGH is exact for |n| < 2^11, so the
# reduction x - n ln 2 loses nothing to rounding.
_LOG2_E = np.float32(1.4426950408889634)
_LN2_HIGH = np.float32(0.693145751953125)
_LN2_LOW = np.float32(1.4286067653302226e-06)
_EXP_TAYLOR = (1.0, 1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040)


@njit(nogil=True, cache=True)  # no fastmath: reassociating the reduction would undo it
def exp_nonpositive(x):
    """exp(x) in float32 for x <= 0 (about 0 below -87, where float32 underflows):
    e^x = 2^n e^r with n = rint(x log2 e), r = x - n ln 2, and 2^n built from its exponent
    bits. Vectorizes. A NaN stays NaN (the clamp is written so that it lets NaN through)."""
    x = x if not x < np.float32(-87) else np.float32(-87)
    n = np.rint(x * _LOG2_E)
    r = (x - n * _LN2_HIGH) - n * _LN2_LOW
    p = np.float32(_EXP_TAYLOR[7])
    for k in range(6, -1, -1):
        p = p * r + np.float32(_EXP_TAYLOR[k])
    return p * float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


# A lone query token takes attention_one_token from this many visible positions on; below it
# the fixed cost of its parts and their merge (a few us) outweighs reading the cache once
# (measured crossover: ~128 on the default model's shapes, 2 cores, cache cold).
ONE_TOKEN_MIN_POSITIONS = 128


@njit(**SERIAL)
def attention(q, k_cache, v_cache, pos0, sliding_window):
    """Causal grouped-query attention for queries q (T, n_heads, hs) at positions pos0.. over
    head-major caches (n_kv_heads, n_ctx, hs): (T, n_heads, hs)."""
    visible = min(pos0 + 1, sliding_window) if sliding_window > 0 else pos0 + 1
    if q.shape[0] == 1 and visible >= ONE_TOKEN_MIN_POSITIONS:
        return attention_one_token(q, k_cache, v_cache, pos0, sliding_window)
    return attention_tokens(q, k_cache, v_cache, pos0, sliding_window)


@njit(**PARALLEL)
def attention_tokens(q, k_cache, v_cache, pos0, sliding_window):
    """Several query tokens: query heads spread over the cores, each walking its keys and
    values. Softmax in float32 after subtracting the row's max."""
    T, n_heads, hs = q.shape
    group = n_heads // k_cache.shape[0]
    out = np.zeros_like(q)
    scale = np.float32(1 / np.sqrt(hs))
    for h in prange(n_heads):
        keys, values = k_cache[h // group], v_cache[h // group]
        scores = np.empty(pos0 + T, np.float32)
        for t in range(T):
            pos = pos0 + t
            first = max(0, pos - sliding_window + 1) if sliding_window > 0 else 0
            query, head_out = q[t, h], out[t, h]
            best = np.float32(-np.inf)
            for j in range(first, pos + 1):  # scores: q . k / sqrt(hs)
                key = keys[j]
                dot = np.float32(0)
                for i in range(hs):
                    dot += query[i] * key[i]
                scores[j] = dot * scale
                best = max(best, scores[j])
            total = np.float32(0)
            for j in range(first, pos + 1):  # softmax over the visible keys
                scores[j] = exp_nonpositive(scores[j] - best)
                total += scores[j]
            for j in range(first, pos + 1):  # the probability-weighted sum of the values
                p = scores[j] / total
                value = values[j]
                for i in range(hs):
                    head_out[i] += p * value[i]
    return out


# Work items per key/value head and part: a multiple of 8, so 2, 4 or 8 cores get as many each
# (numba.get_num_threads would make the kernel uncacheable: it calls through a ctypes pointer).
ITEMS_MULTIPLE = 2
PREFETCH_ROWS = 16  # keys or values asked for ahead of the one read (4 KiB at head size 64)


@njit(**SERIAL)
def parts_per_head(n_kv_heads, n_visible):
    """How many parts to cut each key/value head's visible positions into: n_kv_heads * parts
    a multiple of ITEMS_MULTIPLE, with parts of at least 16 positions."""
    a, b = n_kv_heads, ITEMS_MULTIPLE  # ITEMS_MULTIPLE // gcd(n_kv_heads, ITEMS_MULTIPLE)
    while b:
        a, b = b, a % b
    return max(1, min(ITEMS_MULTIPLE // a, n_visible // 8))


@njit(**PARALLEL)
def attention_one_token(q, k_cache, v_cache, pos, sliding_window):
    """One query token q (1, n_heads, hs) at ``pos``: work items are (key/value head, part of
    the visible positions); each reads its keys and values once for the group of query heads
    that share them and keeps that part's softmax max, sum and weighted values, merged at the
    end."""
    n_heads, hs = q.shape[1], q.shape[2]
    n_kv = k_cache.shape[0]
    group = n_heads // n_kv
    first = max(0, pos - sliding_window + 1) if sliding_window > 0 else 0
    n = pos + 1 - first
    parts = parts_per_head(n_kv, n)
    scale = np.float32(1 / np.sqrt(hs))
    part_max = np.empty((n_kv * parts, group), np.float32)
    part_sum = np.empty((n_kv * parts, group), np.float32)
    part_out = np.zeros((n_kv * parts, group, hs), np.float32)
    part_scores = np.empty((n_kv * parts, group, -(-n // parts)), np.float32)
    for item in prange(n_kv * parts):
        kv_head, part = item // parts, item % parts
        a, b = first + n * part // parts, first + n * (part + 1) // parts
        keys, values, queries = k_cache[kv_head], v_cache[kv_head], q[0, kv_head * group:(kv_head + 1) * group]
        scores = part_scores[item]
        for j in range(a, b):  # scores: q . k / sqrt(hs), each key read once for the group
            key = keys[j]
            for line in range(0, hs, 16):  # (the cache comes from memory: ask ahead)
                prefetch(keys, (j + PREFETCH_ROWS) * hs + line)
            for g in range(group):
                dot = np.float32(0)
                for i in range(hs):
                    dot += queries[g, i] * key[i]
                scores[g, j - a] = dot * scale
        for g in range(group):  # this part's softmax numerators, its max and their sum
            best = np.float32(-np.inf)
            for j in range(b - a):
                best = max(best, scores[g, j])
            total = np.float32(0)
            for j in range(b - a):
                scores[g, j] = exp_nonpositive(scores[g, j] - best)
                total += scores[g, j]
            part_max[item, g], part_sum[item, g] = best, total
        weighted = part_out[item]
        for j in range(a, b):  # the numerator-weighted sum of the values
            value = values[j]
            for line in range(0, hs, 16):
                prefetch(values, (j + PREFETCH_ROWS) * hs + line)
            for g in range(group):
                p = scores[g, j - a]
                for i in range(hs):
                    weighted[g, i] += p * value[i]

    # merge the parts: rescale each to the largest max, then divide by the total
    out = np.zeros_like(q)
    for h in range(n_heads):
        kv_head, g = h // group, h % group
        items = range(kv_head * parts, (kv_head + 1) * parts)
        best = np.float32(-np.inf)
        for item in items:
            best = max(best, part_max[item, g])
        total = np.float32(0)
        head_out = out[0, h]
        for item in items:
            w = exp_nonpositive(part_max[item, g] - best)
            total += w * part_sum[item, g]
            for i in range(hs):
                head_out[i] += w * part_out[item, g, i]
        for i in range(hs):
            head_out[i] /= total
    return out
