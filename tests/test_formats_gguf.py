"""GGUF reader: valid files from the `gguf` writer round-trip; every hostile case of
RELIABILITY.md rows 1-17 ends in one ModelFormatError whose message starts with the file name."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import gguf as gguf_pkg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_formats import (
    ARR, BOOL, I32, STR, U8, U32, gstr, kv, kv_str, kv_u32, pack_gguf, tinfo, write_small_gguf,
)
from perro_pastor.errors import ModelFormatError
from perro_pastor.formats import open_model_file
from perro_pastor.formats.gguf import read_gguf
from perro_pastor.quant import GGMLType

T_F32, T_Q4_0 = 0, 2


def rejects(tmp_path: Path, data: bytes, *fragments: str, name: str = "bad.gguf") -> str:
    """Write `data`, read it, and check the error names the file and every fragment."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ModelFormatError) as e:
        read_gguf(path)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def one_tensor(dims, ttype=T_F32, offset=0, data_len=0, kvs=()):
    return pack_gguf(list(kvs), [tinfo("t", dims, ttype, offset)], b"\0" * data_len)


# -----------------------------------------------------------------------------
# valid files


def test_roundtrip_against_writer(tmp_path):
    path = tmp_path / "small.gguf"
    written = write_small_gguf(path)
    m = open_model_file(path)
    try:
        assert (m.format, m.version) == ("gguf", 3)
        md, ty = m.metadata, m.metadata_types
        assert md["general.architecture"] == "llama" and ty["general.architecture"] == "STRING"
        assert md["llama.block_count"] == 2 and ty["llama.block_count"] == "UINT32"
        assert md["llama.rope.freq_base"] == 10000.0 and ty["llama.rope.freq_base"] == "FLOAT32"
        assert md["test.flag"] is True and md["test.neg"] == -5 and ty["test.neg"] == "INT64"
        assert md["tokenizer.ggml.tokens"] == ["<unk>", "▁hola", "perro", "ñ"]
        assert ty["tokenizer.ggml.tokens"] == "ARRAY[STRING]"
        assert md["tokenizer.ggml.scores"] == [0.0, -1.5, -2.25, -3.0]
        assert ty["tokenizer.ggml.scores"] == "ARRAY[FLOAT32]"
        assert md["tokenizer.ggml.token_type"] == [2, 1, 1, 1]
        t = m.tensors
        assert t["output_norm.weight"].shape == (64,) and t["output_norm.weight"].qtype == GGMLType.F32
        assert t["token_embd.weight"].shape == (64, 4) and t["token_embd.weight"].qtype == GGMLType.F16
        q = t["blk.0.attn_q.weight"]
        assert q.shape == (64, 3) and q.qtype == GGMLType.Q4_0 and q.nbytes == 3 * 2 * 18
        for name, arr in written.items():
            assert m.tensor_bytes(name).tobytes() == arr.tobytes(), name
            assert t[name].offset % 32 == 0
        # the writer's own reader agrees on the absolute offsets
        ref = gguf_pkg.GGUFReader(path)
        for rt in ref.tensors:
            assert t[rt.name].offset == rt.data_offset
    finally:
        m.close()


def test_custom_alignment(tmp_path):
    path = tmp_path / "a64.gguf"
    written = write_small_gguf(path, alignment=64)
    m = read_gguf(path)
    assert m.metadata["general.alignment"] == 64
    for name, arr in written.items():
        assert m.tensors[name].offset % 64 == 0
        assert m.tensor_bytes(name).tobytes() == arr.tobytes()


def test_default_model():
    from perro_pastor.paths import default_model_path

    m = open_model_file(default_model_path())
    try:
        assert m.metadata["general.architecture"] == "llama"
        assert m.metadata["llama.block_count"] == 30
        for layer in range(30):
            for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                assert f"blk.{layer}.{part}.weight" in m.tensors
        assert "blk.30.attn_q.weight" not in m.tensors
        assert m.tensors["blk.0.attn_q.weight"].shape == (576, 576)
        assert len(m.metadata["tokenizer.ggml.tokens"]) == 49152
        last = max(m.tensors.values(), key=lambda t: t.offset)
        assert last.offset + last.nbytes <= m.path.stat().st_size
    finally:
        m.close()


# -----------------------------------------------------------------------------
# rows 1-2: size, magic, version


@pytest.mark.parametrize("data", [b"", b"GGUF", b"GGUF" + b"\3\0\0\0" + b"\0" * 15])
def test_file_too_small(tmp_path, data):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match="too small") as e:
        open_model_file(path)
    assert str(e.value).startswith(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="cannot open"):
        open_model_file(tmp_path / "nope.gguf")


def test_bad_magic(tmp_path):
    rejects(tmp_path, pack_gguf(magic=b"GGUX"), "bad magic", "GGUX")
    rejects(tmp_path, pack_gguf(magic=b"FUGG"), "big-endian")
    be = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    rejects(tmp_path, be, "big-endian", "0x03000000")


@pytest.mark.parametrize("version", [0, 1, 4, 5, 2**32 - 1])
def test_bad_version(tmp_path, version):
    rejects(tmp_path, pack_gguf(version=version), "version", str(version))


def test_version_2_accepted(tmp_path):
    path = tmp_path / "v2.gguf"
    path.write_bytes(pack_gguf([kv_u32("a.b", 7)], version=2))
    m = read_gguf(path)
    assert m.version == 2 and m.metadata == {"a.b": 7}


# -----------------------------------------------------------------------------
# rows 3-10: metadata


@pytest.mark.parametrize("field", ["n_tensors", "n_kv"])
@pytest.mark.parametrize("count", [2**63, 2**64 - 1, 10**6])
def test_huge_counts_rejected_fast_and_small(tmp_path, field, count):
    data = pack_gguf([kv_u32("a.b", 1)], **{field: count})
    path = tmp_path / "huge.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ModelFormatError, match=f"{field}={count}"):
        read_gguf(path)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.01 and peak < 256 * 1024, (elapsed, peak)


@pytest.mark.parametrize("claimed", [2**63, 2**64 - 1, 9])
def test_string_length_past_eof(tmp_path, claimed):
    value = struct.pack("<Q", claimed) + b"abc"  # only 3 bytes follow
    rejects(tmp_path, pack_gguf([kv("a.b", STR, value)]), "value of 'a.b'", f"claims {claimed} bytes")
    key = struct.pack("<Q", claimed) + b"abcdefgh"
    rejects(tmp_path, pack_gguf([key], n_kv=1), "key #0", f"claims {claimed} bytes")


def test_array_count_huge_in_subprocess(tmp_path):
    """The 60-byte file that makes gguf 0.19.0 hang: bounded address space, 2 s alarm."""
    data = pack_gguf([kv("a.b", ARR, struct.pack("<IQ", U32, 2**62))])
    assert len(data) < 64
    path = tmp_path / "arr.gguf"
    path.write_bytes(data)
    code = (
        "import resource, signal, sys\n"
        "from perro_pastor.errors import ModelFormatError\n"
        "from perro_pastor.formats.gguf import read_gguf\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "signal.alarm(2)\n"
        "try:\n"
        f"    read_gguf({str(path)!r})\n"
        "except ModelFormatError as e:\n"
        "    print('REJECTED', e)\n"
    )
    env = {"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "REJECTED" in out.stdout and "claims 4611686018427387904 UINT32 elements" in out.stdout


def test_array_count_past_eof_strings(tmp_path):
    rejects(tmp_path, pack_gguf([kv("a.b", ARR, struct.pack("<IQ", STR, 3) + gstr("x"))]), "array 'a.b'")


@pytest.mark.parametrize("depth", [2, 5000])
def test_nested_arrays_rejected(tmp_path, depth):
    payload = struct.pack("<IQ", ARR, 1) * (depth - 1) + struct.pack("<IQ", U8, 1) + b"\1"
    rejects(tmp_path, pack_gguf([kv("a.b", ARR, payload)]), "nested arrays")


@pytest.mark.parametrize("code", [13, 999, 2**32 - 1])
def test_unknown_value_type(tmp_path, code):
    rejects(tmp_path, pack_gguf([kv("a.b", code, b"\0" * 8)]), "unknown value type", str(code))
    rejects(tmp_path, pack_gguf([kv("a.b", ARR, struct.pack("<IQ", code, 1))]), "unknown value type")


def test_bad_keys(tmp_path):
    rejects(tmp_path, pack_gguf([kv_u32("a.b", 1), kv_u32("a.b", 2)]), "duplicate metadata key 'a.b'")
    rejects(tmp_path, pack_gguf([kv_u32("", 1)]), "key #0 is empty")
    rejects(tmp_path, pack_gguf([kv(b"\xff\xfe", U32, b"\0" * 4)]), "not printable ASCII")
    rejects(tmp_path, pack_gguf([kv("clé", U32, b"\0" * 4)]), "not printable ASCII")


def test_bad_string_value_utf8(tmp_path):
    rejects(tmp_path, pack_gguf([kv_str("a.b", b"\xc3(")]), "not valid UTF-8")
    arr = struct.pack("<IQ", STR, 2) + gstr("ok") + gstr(b"\xff")
    rejects(tmp_path, pack_gguf([kv("a.b", ARR, arr)]), "element 1", "not valid UTF-8")


def test_bool_byte_two(tmp_path):
    rejects(tmp_path, pack_gguf([kv("a.b", BOOL, b"\2")]), "BOOL", "byte 2")
    rejects(tmp_path, pack_gguf([kv("a.b", ARR, struct.pack("<IQ", BOOL, 3) + b"\1\0\2")]), "byte 2")


@pytest.mark.parametrize(
    "entry, fragment",
    [
        (kv_u32("general.alignment", 0), "= 0"),
        (kv_u32("general.alignment", 13), "= 13"),
        (kv_u32("general.alignment", 2**31), "= 2147483648"),
        (kv("general.alignment", I32, struct.pack("<i", 32)), "stored as INT32"),
        (kv_str("general.alignment", "32"), "stored as STRING"),
    ],
)
def test_bad_alignment(tmp_path, entry, fragment):
    rejects(tmp_path, pack_gguf([entry]), "general.alignment", fragment)


# -----------------------------------------------------------------------------
# rows 11-17: tensor infos and data


def test_bad_tensor_names(tmp_path):
    rejects(tmp_path, pack_gguf([], [tinfo("", [4], T_F32, 0)], b"\0" * 16), "empty name")
    rejects(tmp_path, pack_gguf([], [tinfo("x" * 64, [4], T_F32, 0)], b"\0" * 16), "64 bytes")
    two = [tinfo("t", [8], T_F32, 0), tinfo("t", [8], T_F32, 32)]
    rejects(tmp_path, pack_gguf([], two, b"\0" * 64), "duplicate tensor name 't'")
    path = tmp_path / "ok.gguf"
    path.write_bytes(pack_gguf([], [tinfo("x" * 63, [4], T_F32, 0)], b"\0" * 16))
    assert read_gguf(path).tensors["x" * 63].nbytes == 16


@pytest.mark.parametrize("n_dims", [0, 5, 2**31])
def test_bad_n_dims_rejected_before_dims(tmp_path, n_dims):
    # 40 bytes follow n_dims: reading 2^31 dims first would report truncation instead
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
    data = header + gstr("t") + struct.pack("<I", n_dims) + b"\0" * 40
    rejects(tmp_path, data, f"n_dims = {n_dims}")


@pytest.mark.parametrize(
    "dims, fragment",
    [
        ([0], "dim 0 = 0"),
        ([4, 2**64 - 1], "dim 1 = 18446744073709551615"),
        ([4194305, 4194305, 211106198978564], "elements (> 2^63-1)"),
    ],
)
def test_bad_dims(tmp_path, dims, fragment):
    rejects(tmp_path, one_tensor(dims, data_len=64), "tensor 't'", fragment)


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dims=st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 40), min_size=1, max_size=4))
def test_dims_property(tmp_path, dims):
    path = tmp_path / "dims.gguf"
    path.write_bytes(one_tensor(dims, data_len=256))
    try:
        m = read_gguf(path)
    except ModelFormatError as e:
        assert str(e).startswith(str(path))
        return
    n = int(np.prod(dims, dtype=object))
    assert 0 < n * 4 <= 256 and m.tensors["t"].nbytes == n * 4


@pytest.mark.parametrize("code", [4, 5, 16, 31, 999])
def test_unsupported_tensor_type(tmp_path, code):
    rejects(tmp_path, one_tensor([32], code, data_len=256), f"unsupported tensor type {code}")


def test_quantized_row_not_multiple_of_block(tmp_path):
    rejects(tmp_path, one_tensor([33, 2], T_Q4_0, data_len=256), "row length 33", "block size 32")


def test_misaligned_overlapping_out_of_order(tmp_path):
    rejects(tmp_path, one_tensor([4], offset=16, data_len=64), "offset 16", "alignment 32")
    overlap = [tinfo("a", [16], T_F32, 0), tinfo("b", [16], T_F32, 32)]  # a is 64 bytes long
    rejects(tmp_path, pack_gguf([], overlap, b"\0" * 128), "tensor 'b'", "overlaps")
    backwards = [tinfo("a", [8], T_F32, 32), tinfo("b", [8], T_F32, 0)]
    rejects(tmp_path, pack_gguf([], backwards, b"\0" * 64), "tensor 'b'", "precedes")


def test_data_past_eof_message(tmp_path):
    data = pack_gguf([], [tinfo("blk.0.attn_q.weight", [64, 2], T_F32, 0)], b"\0" * 500)
    start = len(data) - 500
    msg = rejects(tmp_path, data, name="trunc.gguf")
    assert (
        f"tensor 'blk.0.attn_q.weight' data runs past end of file "
        f"(needs bytes {start}..{start + 512}, file has {len(data)})"
    ) in msg
    rejects(tmp_path, one_tensor([4], offset=2**63, data_len=64), "runs past end of file")


def test_truncation_at_every_kth_byte(tmp_path):
    full = tmp_path / "full.gguf"
    write_small_gguf(full)
    data = full.read_bytes()
    # the writer pads the file after the last tensor; cutting only that padding is harmless
    ref = gguf_pkg.GGUFReader(full)
    data_end = max(t.data_offset + t.n_bytes for t in ref.tensors)
    assert data_end < len(data)
    cut = tmp_path / "cut.gguf"
    for k in list(range(0, data_end, 7)) + [data_end - 1]:
        cut.write_bytes(data[:k])
        with pytest.raises(ModelFormatError) as e:
            open_model_file(cut)
        assert str(e.value).startswith(str(cut))
    cut.write_bytes(data[:data_end])
    assert len(open_model_file(cut).tensors) == 3


# -----------------------------------------------------------------------------
# row 26: random and mutated files


def _read_or_format_error(path: Path) -> None:
    t0 = time.perf_counter()
    try:
        open_model_file(path).close()
    except ModelFormatError as e:
        assert str(e).startswith(str(path))
    assert time.perf_counter() - t0 < 2.0


_SEED_FILE: bytes | None = None


def _seed_file(tmp_path: Path) -> bytes:
    global _SEED_FILE
    if _SEED_FILE is None:
        write_small_gguf(tmp_path / "seed.gguf")
        _SEED_FILE = (tmp_path / "seed.gguf").read_bytes()
    return _SEED_FILE


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=512) | st.binary(max_size=200).map(lambda b: b"GGUF\3\0\0\0" + b))
def test_random_bytes(tmp_path, data):
    path = tmp_path / "rand.gguf"
    path.write_bytes(data)
    _read_or_format_error(path)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=4),
    cut=st.none() | st.integers(0, 10**6),
    splice=st.none() | st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
)
def test_mutated_valid_file(tmp_path, flips, cut, splice):
    data = bytearray(_seed_file(tmp_path))
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    if splice is not None:
        pos = splice[0] % len(data)
        data[pos : pos + len(splice[1])] = splice[1]
    if cut is not None:
        data = data[: cut % len(data)]
    path = tmp_path / "mut.gguf"
    path.write_bytes(bytes(data))
    _read_or_format_error(path)
