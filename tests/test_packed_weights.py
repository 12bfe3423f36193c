"""The compiled cpu kernels (cpu_kernels.py over packed_weights.py) against their oracles:
``gguf.quants`` for what the packed tiles hold (bit-exact), a float64 product for the mat-vec
and the prefill path, on fresh random blocks of every type, odd shapes, and the real file.

Tolerance of a product: float32 accumulation over ``cols`` terms, so |error| <= 1e-5 of
sum |w| |x| (the sum of the magnitudes the dot product adds up).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from perro_pastor import cpu, packed_weights
from perro_pastor.formats import open_model_file
from perro_pastor.packed_weights import TILE_ROWS, pack, stack
from perro_pastor.paths import resolve_model
from perro_pastor.quant import BLOCK_DTYPES, GGMLType, row_nbytes
from test_quant import K_QUANTS, fresh_rng, oracle, random_blocks

INTEGER_TYPES = list(BLOCK_DTYPES)
FLOAT_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16]


def random_matrix(rng, qtype: GGMLType, rows: int, cols: int) -> np.ndarray:
    if qtype in BLOCK_DTYPES:
        return random_blocks(rng, qtype, rows, cols)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if qtype == GGMLType.F16:
        return w.astype(np.float16).view(np.uint8)
    if qtype == GGMLType.BF16:
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    return w.view(np.uint8)


def check_product(got: np.ndarray, x: np.ndarray, w64: np.ndarray, msg: str) -> None:
    want = x.astype(np.float64) @ w64.T
    bound = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w64).T) + 1e-30
    worst = float((np.abs(got - want) / bound).max())
    assert worst <= 1.0, f"{msg}: error {worst:.2f}x the float32 bound"


@pytest.mark.parametrize("qtype", INTEGER_TYPES + FLOAT_TYPES, ids=lambda t: t.name)
def test_packed_tiles_hold_exactly_the_gguf_weights(qtype):
    rng, seed = fresh_rng()
    cols = 512 if qtype in K_QUANTS else 96
    for rows in (1, TILE_ROWS, 2 * TILE_ROWS + 13):  # a lone row, one whole tile, a ragged tile
        raw = random_matrix(rng, qtype, rows, cols)
        want = oracle(raw, qtype).reshape(rows, cols)
        m = pack(raw, qtype, rows, cols)
        np.testing.assert_array_equal(m.dequantize(), want, err_msg=f"seed={seed} rows={rows}")
        np.testing.assert_array_equal(m.dequantize(rows // 3, rows), want[rows // 3:],
                                      err_msg=f"seed={seed} rows={rows}")
        ids = rng.integers(0, rows, size=5)
        np.testing.assert_array_equal(m.take_rows(ids), want[ids], err_msg=f"seed={seed}")


@pytest.mark.parametrize("qtype", INTEGER_TYPES + FLOAT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("tokens", [1, 3, packed_weights.MATVEC_MAX_ROWS + 5])
def test_matmul_matches_float64(qtype, tokens):
    """1 and 3 tokens run the compiled mat-vec, more the BLAS path over dequantized tiles."""
    rng, seed = fresh_rng()
    rows, cols = 3 * TILE_ROWS - 7, (768 if qtype in K_QUANTS else 160)
    raw = random_matrix(rng, qtype, rows, cols)
    w64 = oracle(raw, qtype).reshape(rows, cols).astype(np.float64)
    m = pack(raw, qtype, rows, cols)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    check_product(m.matmul(x), x, w64, f"seed={seed}")
    start, stop = TILE_ROWS - 5, 2 * TILE_ROWS + 9  # a slice across tile edges (the classifier's)
    check_product(m.matmul(x, start, stop), x, w64[start:stop], f"seed={seed} slice")


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q6_K], ids=lambda t: t.name)
def test_stacked_matrices_are_their_members_one_after_another(qtype):
    rng, seed = fresh_rng()
    cols = 256
    members = [random_matrix(rng, qtype, rows, cols) for rows in (2 * TILE_ROWS, TILE_ROWS)]
    packed = [pack(raw, qtype, len(raw), cols) for raw in members]
    both = stack(packed)
    want = np.concatenate([oracle(raw, qtype).reshape(len(raw), cols) for raw in members])
    np.testing.assert_array_equal(both.dequantize(), want, err_msg=f"seed={seed}")
    ragged = pack(random_matrix(rng, qtype, 5, cols), qtype, 5, cols)
    assert stack([packed[0], ragged]) is None  # rows that do not fill a tile are not stacked


def test_pack_rejects_a_wrong_size():
    with pytest.raises(ValueError, match="needs"):
        pack(np.zeros(row_nbytes(GGMLType.Q4_1, 64) * 3 - 1, np.uint8), GGMLType.Q4_1, 3, 64)


@pytest.fixture(scope="module")
def default_file():
    mf = open_model_file(resolve_model("default"))
    yield mf
    mf.close()


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.7.ffn_down.weight", "token_embd.weight"])
def test_real_tensors_of_the_default_model(default_file, name):
    """The file's own Q4_1 and Q8_0 blocks: tiles bit-exact, decode product within bound."""
    rng, seed = fresh_rng()
    t = default_file.tensors[name]
    cols, rows = t.shape
    raw = default_file.tensor_bytes(name)
    want = oracle(raw, t.qtype).reshape(rows, cols)
    m = pack(raw, t.qtype, rows, cols)
    np.testing.assert_array_equal(m.dequantize(), want)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    check_product(m.matmul(x), x, want.astype(np.float64), f"{name} seed={seed}")


def test_numba_forward_matches_the_numpy_reference_at_checkpoints():
    """Whole model, numba kernels vs the float64 NumPy forward: the first checkpoint that
    diverges names the op. Prefill (BLAS over dequantized tiles) then decode (the mat-vec, with
    float activations: the rounded ones are checked against float below)."""
    fast = cpu_model("numba", np.float32)
    fast.transformer.int_activations = False
    ref = cpu_model("numpy", np.float64)
    tokens = np.array(fast.tokenizer.encode("The old shepherd counted his sheep"))
    for label, run in (("prefill", lambda m, kv, tr: m.transformer.forward(tokens, 0, kv, trace=tr)),
                       ("decode", lambda m, kv, tr: m.transformer.forward(tokens[:1], 0, kv, trace=tr))):
        got, want = {}, {}
        run(fast, fast.transformer.new_cache(32), lambda n, v: got.setdefault(n, v.copy()))
        run(ref, ref.transformer.new_cache(32), lambda n, v: want.setdefault(n, v.copy()))
        for name in want:
            scale = np.abs(want[name]).max()
            err = np.abs(got[name] - want[name]).max() / scale
            assert err < 2e-3, f"{label}: {name} differs by {err:.2e} of its scale"


def test_compiled_decode_layers_equal_the_narrated_pass():
    """A lone decoding token runs each layer half in one compiled call; a trace forces the
    narrated pass (one kernel per line). Same kernels, same order: the same bits."""
    model = cpu_model("numba", np.float32)
    t = model.transformer
    tokens = np.array(model.tokenizer.encode("The miller's daughter"))
    fast, narrated = t.new_cache(32), t.new_cache(32)
    t.forward(tokens, 0, fast)
    t.forward(tokens, 0, narrated)
    for i, token in enumerate([7, 1000, 42]):
        pos = len(tokens) + i
        a = t.forward(np.array([token]), pos, fast)
        b = t.forward(np.array([token]), pos, narrated, trace=lambda name, value: None)
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast.key_cache, narrated.key_cache)
    np.testing.assert_array_equal(fast.value_cache, narrated.value_cache)


def cpu_model(kernels: str, dtype):
    from perro_pastor.model import load
    return load("default", backend="cpu", cpu_kernels=kernels, dtype=dtype)


def test_kernels_leave_the_gil_to_other_threads():
    """A game's frame thread keeps running Python while a kernel computes on another thread:
    ticks of the main thread land inside the kernel calls (with the GIL held there would be none)."""
    rng, _ = fresh_rng()
    rows, cols = 2048, 2048
    m = pack(random_blocks(rng, GGMLType.Q4_1, rows, cols), GGMLType.Q4_1, rows, cols)
    x = rng.standard_normal((packed_weights.MATVEC_MAX_ROWS, cols)).astype(np.float32)
    m.matmul(x)  # compiled
    calls, done = [], threading.Event()

    def compute():
        for _ in range(30):
            start = time.perf_counter()
            m.matmul(x)
            calls.append((start, time.perf_counter()))
        done.set()

    ticks = []
    worker = threading.Thread(target=compute)
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.0005)
    worker.join()
    inside = sum(any(a < t < b for a, b in calls) for t in ticks)
    assert inside >= 3, f"{inside} of {len(ticks)} frame-thread ticks ran during the kernel calls"


def test_auto_falls_back_to_numpy_with_one_line_when_numba_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(cpu, "KERNELS_MISSING", "No module named 'numba'")
    assert cpu.pick_kernels("auto", np.dtype(np.float32)) == "numpy"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "numba" in err
    with pytest.raises(ValueError, match="numba"):
        cpu.pick_kernels("numba", np.dtype(np.float32))
    assert cpu.pick_kernels("auto", np.dtype(np.float64)) == "numpy"



@pytest.mark.parametrize("tokens, pos0, window", [(1, 0, 0), (1, 37, 0), (3, 20, 0), (2, 40, 16)])
def test_compiled_per_token_ops_match_their_numpy_twins(tokens, pos0, window):
    """rmsnorm, rope, attention (grouped heads, causal, sliding window) and swiglu as compiled
    for few-token passes, against cpu.py's NumPy ops in float64 on fresh random inputs.
    Tolerance: float32 rounding of sums over a few hundred terms, 2e-5 of the result's scale."""
    from perro_pastor import cpu_kernels
    rng, seed = fresh_rng()
    n_heads, n_kv_heads, hs, n_ctx = 6, 2, 16, 64
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    x = rng.standard_normal((tokens, 96)).astype(np.float32)
    weight = rng.standard_normal(96).astype(np.float32)

    def close(got, want, what):
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 2e-5 * scale, f"{what} seed={seed}"

    close(cpu_kernels.rmsnorm(x, weight, 1e-5), cpu.rmsnorm(f64(x), f64(weight), 1e-5), "rmsnorm")
    close(cpu_kernels.swiglu(x, x[::-1].copy()), cpu.swiglu(f64(x), f64(x[::-1])), "swiglu")
    q = rng.standard_normal((tokens, n_heads, hs)).astype(np.float32)
    positions = np.arange(pos0, pos0 + tokens)
    inv_freq = 1e4 ** -(np.arange(0, hs, 2) / hs)
    rotation = cpu.rope_rotation(positions, inv_freq, np.float32)
    close(cpu_kernels.apply_rope(q, rotation), cpu.rope(f64(q), positions, inv_freq), "rope")
    keys = rng.standard_normal((n_kv_heads, n_ctx, hs)).astype(np.float32)
    values = rng.standard_normal((n_kv_heads, n_ctx, hs)).astype(np.float32)
    close(cpu_kernels.attention(q, keys, values, pos0, window),
          cpu.attention(f64(q), f64(keys), f64(values), pos0, window), "attention")


@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_a_token_outside_the_vocabulary_is_refused_in_one_line(kernels):
    model = cpu_model(kernels, np.float32)
    vocab = model.config.vocab_size
    for bad in (vocab, -1):
        with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
            model.transformer.forward(np.array([1, bad]), 0, model.transformer.new_cache(4))


# -----------------------------------------------------------------------------
# activations rounded to 9 bits in decode passes (CpuTransformer.int_activations, on by default)

def rounded_reference(x: np.ndarray, levels: int = 255) -> np.ndarray:
    """x rounded as cpu_kernels.round_activation_groups holds it, in float64: per 32 values,
    d = max|x| / L and q = round-half-even(x * L / max|x|) with L = 255 levels (llama.cpp's Q8
    blocks and cpu_vnni.round_activations_to_int8: the same with 127); returns q * d."""
    groups = x.astype(np.float64).reshape(len(x), -1, 32)
    amax = np.abs(groups).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(levels) / amax.astype(np.float32), 0).astype(np.float32)
    q = np.rint((groups.astype(np.float32) * inv)).astype(np.float64)
    return (q * (amax / levels).astype(np.float32)).reshape(x.shape)


def test_int_groups_round_to_9_bits_per_32_activations():
    from perro_pastor import cpu_kernels
    rng, seed = fresh_rng()
    x = (rng.standard_normal((3, 192)) * rng.uniform(0.01, 30, (3, 1))).astype(np.float32)
    x[1, 32:64] = 0  # an all-zero group
    q, d, s, c = cpu_kernels.round_activation_groups(x)
    assert q.dtype == np.int16 and np.abs(q.astype(int)).max() == 255
    np.testing.assert_allclose(q * d[:, :, None].astype(np.float64), rounded_reference(x).reshape(q.shape),
                               rtol=1e-6, atol=0, err_msg=f"seed={seed}")
    np.testing.assert_allclose(s, d * q.astype(np.int64).sum(axis=2), rtol=1e-6, err_msg=f"seed={seed}")
    halves = q.astype(np.int64).reshape(3, 6, 2, 16).sum(axis=3)
    assert np.array_equal(c, -8 * halves)


def test_int_sums_that_wrap_around_16_bits_end_exact():
    """The extreme case of the int16 lanes: every weight at the bottom (q = 0, centred -8) or top
    (q = 15) of its range against activations at +-255; the running sum wraps, the result may not."""
    from perro_pastor import cpu_kernels
    rows, cols = TILE_ROWS, 64
    for nibble in (0x00, 0xFF):  # q = 0 or q = 15 in both halves of every byte
        blocks = np.zeros(rows * cols // 32, dtype=[("d", "<f2"), ("q", "u1", 16)])
        blocks["d"], blocks["q"] = 1, nibble
        raw = blocks.view(np.uint8)
        m = pack(raw, GGMLType.Q4_0, rows, cols)
        w64 = oracle(raw, GGMLType.Q4_0).reshape(rows, cols).astype(np.float64)
        for sign in (1, -1):
            x = np.full((1, cols), sign * 3.0, np.float32)
            np.testing.assert_allclose(m.matmul(x, rounded=True), x.astype(np.float64) @ w64.T, rtol=1e-6)


INT16_TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K]
VNNI_TYPES = INT16_TYPES + [GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q6_K, GGMLType.Q3_K]


@pytest.mark.parametrize("qtype,vnni", [(t, False) for t in INT16_TYPES] + [(t, True) for t in VNNI_TYPES],
                         ids=lambda v: v.name if isinstance(v, GGMLType) else "vnni" if v else "int16")
@pytest.mark.parametrize("tokens", [1, 3, packed_weights.MATVEC_MAX_ROWS + 5])
def test_int_activation_products_are_the_float64_product_of_the_rounded_activations(qtype, tokens, vnni):
    """The integer sums (int16 lanes at 9 bits for 4-bit tiles; VNNI's int32 lanes at 8 for 4-bit
    and 8-bit tiles, groups of 32 and 16) are exact: the product equals float64 on the rounded x,
    for the mat-vec and for the prefill path (BLAS on the rounded x). On a CPU without VNNI, the
    VNNI order runs the intrinsic's plain LLVM twin."""
    rng, seed = fresh_rng()
    cols = 512 if qtype in K_QUANTS else 160
    rows = 2 * TILE_ROWS + 13
    raw = random_matrix(rng, qtype, rows, cols)
    w64 = oracle(raw, qtype).reshape(rows, cols).astype(np.float64)
    m = pack(raw, qtype, rows, cols, vnni=vnni)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    check_product(m.matmul(x, rounded=True), rounded_reference(x, 127 if vnni else 255), w64,
                  f"{qtype.name} seed={seed}")
    plain = m.matmul(x)
    assert not np.array_equal(plain, m.matmul(x, rounded=True))  # (it did round)


@pytest.mark.parametrize("qtype,vnni", [(GGMLType.Q4_1, False), (GGMLType.Q4_1, True), (GGMLType.Q8_0, True)],
                         ids=["int16", "vnni", "vnni-bytes"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_int_activations_turn_nan_and_inf_into_nan_as_the_float_kernel_does(bad, qtype, vnni):
    """A broken model's NaN or inf activation: every output is NaN (or inf) on both paths, never
    a finite number made up by casting NaN to an integer."""
    rng, _ = fresh_rng()
    raw = random_matrix(rng, qtype, TILE_ROWS, 64)
    m = pack(raw, qtype, TILE_ROWS, 64, vnni=vnni)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    x[0, 40] = bad
    assert not np.isfinite(m.matmul(x)).any() and not np.isfinite(m.matmul(x, rounded=True)).any()


@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q6_K, GGMLType.F16], ids=lambda t: t.name)
def test_matrices_without_an_integer_kernel_keep_float_activations(qtype):
    """8-bit tiles in the plain order (CPUs without VNNI) and float matrices."""
    rng, _ = fresh_rng()
    raw = random_matrix(rng, qtype, TILE_ROWS, 512)
    m = pack(raw, qtype, TILE_ROWS, 512, vnni=False)
    x = rng.standard_normal((1, 512)).astype(np.float32)
    assert not m.nibbles and np.array_equal(m.matmul(x, rounded=True), m.matmul(x))


def test_int_activations_round_decode_passes_only():
    """On by default: a decode pass's logits move by the rounding's noise (well under llama.cpp's,
    tests/test_golden.py) and keep the argmax; a prompt pass is float, bit for bit, so
    perplexity is the float path's."""
    from perro_pastor.model import load
    model = load("default", backend="cpu")
    try:
        tr = model.transformer
        assert tr.int_activations
        prompt = np.array(model.tokenizer.encode("The old miller said that the river"))
        prompt_logits, decode_logits = {}, {}
        for on in (False, True):
            tr.int_activations = on
            kv = tr.new_cache(64)
            prompt_logits[on] = tr.forward(prompt[:-1], 0, kv, all_logits=True)
            decode_logits[on] = tr.forward(prompt[-1:], len(prompt) - 1, kv)
        assert np.array_equal(prompt_logits[True], prompt_logits[False])
        moved = np.abs(decode_logits[True] - decode_logits[False]).max()
        assert 0 < moved < 0.5, moved
        assert np.argmax(decode_logits[True]) == np.argmax(decode_logits[False])
    finally:
        model.close()


def test_int_activations_need_the_compiled_kernels():
    model = cpu_model("numpy", np.float32)
    try:
        with pytest.raises(ValueError, match="compiled cpu kernels"):
            model.transformer.int_activations = True
        assert model.transformer.int_activations is False
    finally:
        model.close()


@pytest.mark.parametrize("vnni, bound", [(False, 0.06), (True, 0.09)], ids=["int16", "vnni"])
def test_int_activations_move_logit_gaps_by_half_llama_cpp_s_noise(monkeypatch, vnni, bound):
    """The rounding's noise, a regression guard: along a text, teacher-forced, the gap between
    the float path's best logit and each of the next three moves by a median under ``bound``.
    9 bits (int16 kernel): on this text 0.046, and 0.068 with 8 bits (ACTIVATION_LEVELS = 127).
    VNNI's 8 bits: under llama.cpp's own 8-bit rounding, emulated on the four golden texts: 0.09."""
    from perro_pastor import cpu_vnni
    from perro_pastor.model import load
    monkeypatch.setattr(cpu_vnni, "vnni_available", lambda: vnni)
    model = load("default", backend="cpu")
    try:
        tr = model.transformer
        tokens = model.tokenizer.encode("Once upon a time, in a small village, there was a wise old "
                                        "wizard named Elwes. Elwes was a master of magic")
        walks = {}
        for on in (False, True):
            tr.int_activations = on
            kv = tr.new_cache(len(tokens))
            tr.forward(np.array(tokens[:4]), 0, kv)
            walks[on] = np.array([tr.forward(np.array([t]), i, kv) for i, t in enumerate(tokens[4:], 4)])
        best = np.argsort(-walks[False], axis=1)[:, :4]
        gap = {on: np.take_along_axis(walks[on], best[:, :1], 1) - np.take_along_axis(walks[on], best[:, 1:], 1)
               for on in walks}
        shift = np.abs(gap[True] - gap[False])
        assert tr.store.vnni == vnni
        assert 0 < np.median(shift) < bound, np.median(shift)
    finally:
        model.close()


def test_packing_reports_each_chunk_of_the_file_it_has_packed():
    """The loader gives a tensor's file pages back chunk by chunk as pack() reports them (the
    default model's 30 MB classifier held its pages and a second copy at once: generate's peak
    RSS was 368-420 MB for a one-token prompt, 339 now): the ranges follow one another and
    cover every byte."""
    rng, seed = fresh_rng()
    rows = packed_weights.PACK_CHUNK_ROWS * 2 + 70
    raw = random_matrix(rng, GGMLType.Q8_0, rows, 64)
    seen = []
    pack(raw, GGMLType.Q8_0, rows, 64, packed_bytes=lambda a, b: seen.append((a, b)))
    assert len(seen) == 3 and seen[0][0] == 0 and seen[-1][1] == raw.nbytes, f"seed={seed}"
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
