"""4-bit tiles in VNNI order (perro_pastor/cpu_vnni.py): the order is a lossless rearrangement,
every reader of the tiles decodes the same weights as gguf, and the intrinsic's two ways (the
VNNI instruction, its plain LLVM twin) give the same sums. The products themselves are checked
against float64 in test_packed_weights.py (test_int_activation_products_..., vnni). Fresh
random inputs every run; the seed is in the message."""

import numpy as np
import pytest

pytest.importorskip("numba")

from perro_pastor import cpu_vnni  # noqa: E402
from perro_pastor.packed_weights import TILE_ROWS, pack, stack  # noqa: E402
from perro_pastor.quant import GGMLType  # noqa: E402
from test_quant import fresh_rng, oracle  # noqa: E402
from test_packed_weights import check_product, random_matrix  # noqa: E402

NIBBLE_TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K]
BYTE_TYPES = [GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q6_K, GGMLType.Q3_K, GGMLType.Q2_K, GGMLType.Q5_K]
K_QUANTS = (GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q3_K, GGMLType.Q2_K, GGMLType.Q5_K)


def test_vnni_order_is_a_lossless_rearrangement():
    rng, seed = fresh_rng()
    tiles = rng.integers(0, 256, (3, 5, 16, 64), dtype=np.uint8)
    vnni = cpu_vnni.to_vnni_order(tiles)
    assert np.array_equal(cpu_vnni.from_vnni_order(vnni), tiles), f"seed={seed}"
    # row 16 * 2 + 5, byte j = 4 * 3 + 1 of group 4 of tile 1 sits at lane block 2, block 3, lane 5, byte 1
    assert vnni[1, 4].reshape(-1)[2 * 256 + 3 * 64 + 5 * 4 + 1] == tiles[1, 4, 13, 37]


def test_8_bit_tiles_in_vnni_order_hold_q_plus_128_losslessly():
    rng, seed = fresh_rng()
    for J in (32, 16):  # groups of 32 (Q8_0, Q5_x) and of 16 (Q2_K, Q3_K, Q6_K) weights
        tiles = rng.integers(-128, 128, (2, 3, J, 64), dtype=np.int8)
        vnni = cpu_vnni.to_vnni_bytes(tiles)
        assert np.array_equal(cpu_vnni.from_vnni_bytes(vnni), tiles), f"seed={seed}"
        # row 16 * 1 + 9, weight j = 4 * 2 + 3 of group 2 of tile 1, stored as q + 128
        assert vnni[1, 2].reshape(-1)[1 * 16 * J + 2 * 64 + 9 * 4 + 3].view(np.uint8) == int(tiles[1, 2, 11, 25]) + 128


@pytest.mark.parametrize("qtype", NIBBLE_TYPES + BYTE_TYPES, ids=lambda t: t.name)
def test_every_reader_of_vnni_tiles_decodes_the_file_s_weights(qtype):
    """dequantize (prompt passes), take_rows (embedding lookups), float products (the float
    mat-vec on a plain copy, and BLAS on dequantized rows) and stacking read the VNNI order as
    the plain order's twins do."""
    rng, seed = fresh_rng()
    rows, cols = 3 * TILE_ROWS, 512 if qtype in K_QUANTS else 96
    raw = random_matrix(rng, qtype, rows, cols)
    want = oracle(raw, qtype).reshape(rows, cols)
    m = pack(raw, qtype, rows, cols, vnni=True)
    assert m.vnni and not pack(raw, qtype, rows, cols, vnni=False).vnni
    msg = f"{qtype.name} seed={seed}"
    np.testing.assert_array_equal(m.dequantize(), want, err_msg=msg)
    np.testing.assert_array_equal(m.dequantize(TILE_ROWS + 5, 2 * TILE_ROWS + 9), want[TILE_ROWS + 5:2 * TILE_ROWS + 9])
    ids = rng.integers(0, rows, 7)
    np.testing.assert_array_equal(m.take_rows(ids), want[ids], err_msg=msg)
    for tokens in (2, 12):
        x = rng.standard_normal((tokens, cols)).astype(np.float32)
        check_product(m.matmul(x), x, want.astype(np.float64), f"{msg} tokens={tokens}")
    both = stack([m, m])
    assert both.vnni and np.array_equal(both.dequantize(rows, 2 * rows), want)
    assert stack([m, pack(raw, qtype, rows, cols, vnni=False)]) is None  # (one order per stack)


def test_the_plain_llvm_twin_sums_as_the_vnni_instruction_does(monkeypatch):
    """dot_16_rows compiled without the instruction (as on a CPU without VNNI) against NumPy,
    and, where the CPU has VNNI, against the instruction."""
    from numba import njit

    rng, seed = fresh_rng()
    block = rng.integers(0, 256, (16, 64), dtype=np.uint8)
    xq = rng.integers(-127, 128, 32, dtype=np.int8)
    order = cpu_vnni.from_vnni_order(block[None, None])[0, 0]  # (16 bytes j, 64 rows)
    q = np.concatenate([order & 0x0F, order >> 4]).astype(np.int64)  # (32 weights, 64 rows)
    want = (q * xq[:, None].astype(np.int64)).sum(axis=0)

    def sums_of(kernel):
        got = np.empty(64, np.int32)
        for lane_block in range(4):
            out = np.empty(16, np.int32)
            kernel(block, lane_block * 256, xq, 0, out)
            got[lane_block * 16:(lane_block + 1) * 16] = out
        return got

    as_compiled = njit(lambda *a: cpu_vnni.dot_16_rows(*a))
    assert np.array_equal(sums_of(as_compiled), want), f"seed={seed}"
    monkeypatch.setattr(cpu_vnni, "cpu_has_vnni", lambda: False)
    plain_twin = njit(lambda *a: cpu_vnni.dot_16_rows(*a))
    assert np.array_equal(sums_of(plain_twin), want), f"seed={seed}"


@pytest.mark.parametrize("qtype", NIBBLE_TYPES, ids=lambda t: t.name)
def test_vnni_tiles_keep_float16_scales_only_where_exact_and_multiply_the_same(qtype):
    """Q4_0 and Q4_1 files store their scales as float16, so the VNNI tiles keep them so (0.625
    bytes a weight); Q4_K's products of two scales are not float16 numbers and stay float32.
    The kernel's products are bit for bit those of the same tiles with float32 scales."""
    rng, seed = fresh_rng()
    rows, cols = 2 * TILE_ROWS, 512 if qtype == GGMLType.Q4_K else 96
    m = pack(random_matrix(rng, qtype, rows, cols), qtype, rows, cols, vnni=True)
    assert m.scales.dtype == (np.float32 if qtype == GGMLType.Q4_K else np.float16), f"seed={seed}"
    x = rng.standard_normal((3, cols)).astype(np.float32)
    rounded = cpu_vnni.round_activations_to_int8(x)
    got, wide = np.empty((3, rows), np.float32), np.empty((3, rows), np.float32)
    cpu_vnni.matvec_nibbles_vnni(m.data, m.kernel_args()[1], *rounded, got)
    cpu_vnni.matvec_nibbles_vnni(m.data, m.scales.astype(np.float32), *rounded, wide)
    assert np.array_equal(got, wide), f"{qtype.name} seed={seed}"
