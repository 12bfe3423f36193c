"""llama2.c checkpoints and tokenizer.bin: synthetic files (dim 64, 2 layers, vocab 32) read back
as GGUF-named F32 tensors that are views of the exact bytes written; hostile headers (row 24) and
tokenizers (row 25) end in ModelFormatError."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_formats import llama_pieces, write_llama2c, write_tokenizer_bin
from perro_pastor.errors import ModelFormatError
from perro_pastor.formats import open_model_file
from perro_pastor.formats.llama2c import read_checkpoint
from perro_pastor.quant import GGMLType

GGUF_OF = {  # fixture weight name -> (GGUF name pattern, per layer?)
    "tok_embeddings": ("token_embd.weight", False),
    "rms_att": ("blk.{}.attn_norm.weight", True),
    "wq": ("blk.{}.attn_q.weight", True),
    "wk": ("blk.{}.attn_k.weight", True),
    "wv": ("blk.{}.attn_v.weight", True),
    "wo": ("blk.{}.attn_output.weight", True),
    "rms_ffn": ("blk.{}.ffn_norm.weight", True),
    "w1": ("blk.{}.ffn_gate.weight", True),
    "w2": ("blk.{}.ffn_down.weight", True),
    "w3": ("blk.{}.ffn_up.weight", True),
    "rms_final": ("output_norm.weight", False),
    "wcls": ("output.weight", False),
}


def make(tmp_path: Path, **kw) -> tuple[Path, dict, list[str], list[float]]:
    path = tmp_path / "model.bin"
    ws = write_llama2c(path, **kw)
    pieces = llama_pieces(kw.get("vocab_size", 32))
    scores = write_tokenizer_bin(tmp_path / "tokenizer.bin", pieces)
    return path, ws, pieces, scores


def check_weights(m, ws):
    for key, arr in ws.items():
        if key.startswith("freq"):
            continue
        pattern, per_layer = GGUF_OF[key]
        items = [(pattern.format(i), arr[i]) for i in range(arr.shape[0])] if per_layer else [(pattern, arr)]
        for name, a in items:
            t = m.tensors[name]
            assert t.qtype == GGMLType.F32 and t.shape == a.shape[::-1], name
            got = m.tensor_bytes(name).view(np.float32).reshape(a.shape)
            np.testing.assert_array_equal(got, a, err_msg=name)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("version", [0, 1])
def test_roundtrip(tmp_path, shared, version):
    path, ws, pieces, scores = make(tmp_path, shared=shared, version=version)
    m = open_model_file(path)
    try:
        assert (m.format, m.version) == ("llama2c", version)
        md = m.metadata
        assert md["general.architecture"] == "llama"
        assert md["llama.embedding_length"] == 64 and md["llama.feed_forward_length"] == 96
        assert md["llama.block_count"] == 2 and md["llama.attention.head_count"] == 4
        assert md["llama.attention.head_count_kv"] == 2 and md["llama.context_length"] == 16
        assert md["llama.rope.dimension_count"] == 16 and md["llama.vocab_size"] == 32
        assert md["llama.attention.layer_norm_rms_epsilon"] == 1e-5
        assert md["llama.rope.freq_base"] == 10000.0
        assert m.metadata_types["llama.block_count"] == "UINT32"
        assert ("output.weight" in m.tensors) == (not shared)
        assert len(m.tensors) == 2 + 9 * 2 + (not shared)
        check_weights(m, ws)
        # tokenizer
        assert md["tokenizer.ggml.model"] == "llama"
        assert md["tokenizer.ggml.tokens"] == pieces
        assert md["tokenizer.ggml.scores"] == scores
        types = md["tokenizer.ggml.token_type"]
        assert types[:3] == [2, 3, 3] and types[3:11] == [6] * 8 and set(types[11:]) == {1}
        assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"]) == (1, 2)
        assert md["tokenizer.ggml.unknown_token_id"] == 0 and md["tokenizer.ggml.add_bos_token"] is True
        assert m.metadata_types["tokenizer.ggml.scores"] == "ARRAY[FLOAT32]"
    finally:
        m.close()


def test_explicit_tokenizer_path_and_missing(tmp_path):
    path, _, pieces, _ = make(tmp_path)
    other = tmp_path / "sub"
    other.mkdir()
    (tmp_path / "tokenizer.bin").rename(other / "tok32.bin")
    with pytest.raises(ModelFormatError, match="tokenizer.bin not found"):
        open_model_file(path)
    m = open_model_file(path, tokenizer_path=other / "tok32.bin")
    assert m.metadata["tokenizer.ggml.tokens"] == pieces


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_or_folder_as_tokenizer_bin_is_named_never_opened(tmp_path):
    path, _, _, _ = make(tmp_path)
    (tmp_path / "tokenizer.bin").unlink()
    os.mkfifo(tmp_path / "tokenizer.bin")  # opening it for reading would block forever
    with pytest.raises(ModelFormatError, match=r"tokenizer.bin: not a regular file \(a FIFO\)"):
        open_model_file(path)
    with pytest.raises(ModelFormatError, match=r"not a regular file \(a folder\)"):
        open_model_file(path, tokenizer_path=tmp_path)


def test_version_2_refused(tmp_path):
    path = tmp_path / "q80.bin"
    path.write_bytes(struct.pack("<Ii7iB", 0x616B3432, 2, 64, 96, 2, 4, 4, 32, 16, 1).ljust(256, b"\0"))
    with pytest.raises(ModelFormatError, match="version 2"):
        open_model_file(path)


def rejects(tmp_path, data: bytes, *fragments: str) -> str:
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError) as e:
        open_model_file(path)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    for f in fragments:
        assert f in msg, msg
    return msg


@pytest.mark.parametrize(
    "header, fragment",
    [
        ((64, 96, 2, 4, 2, 0, 16), "['vocab_size']"),
        ((64, 96, -2, 4, 2, 32, 16), "['n_layers']"),
        ((0, 96, 2, 4, 2, 32, 16), "['dim']"),
        ((64, 96, 2, 4, 2, -(2**31), 16), "does not match"),
        ((64, 96, 2, 5, 5, 32, 16), "dim must divide by n_heads"),
        ((64, 96, 2, 4, 3, 32, 16), "n_heads by n_kv_heads"),
        ((2**31 - 1, 2**31 - 1, 2**31 - 1, 1, 1, 2**31 - 1, 2**31 - 1), "head size"),
        ((2**30, 2**31 - 1, 2**31 - 1, 1, 1, 2**31 - 1, 2**31 - 1), "does not match"),
    ],
)
def test_bad_header(tmp_path, header, fragment):
    rejects(tmp_path, struct.pack("<7i", *header) + b"\0" * 4096, "unknown magic", fragment)


def test_size_mismatch(tmp_path):
    path, *_ = make(tmp_path)
    data = path.read_bytes()
    msg = rejects(tmp_path, data[:-4], "does not match", "dim=64")
    assert f"file size {len(data) - 4}" in msg and f"the {len(data)} bytes" in msg
    rejects(tmp_path, data + b"\0" * 4, "does not match")


SANE_HEADERS = st.builds(
    lambda n_kv, group, half_head, n_layers, hidden, vocab, seq, unshared: [
        n_kv * group * 2 * half_head, hidden, n_layers, n_kv * group, n_kv,
        -vocab if unshared else vocab, seq,
    ],
    st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 3),
    st.integers(1, 20), st.integers(1, 40), st.integers(1, 16), st.booleans(),
)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.lists(st.integers(-(2**31), 2**31 - 1) | st.integers(-2, 12), min_size=7, max_size=7)
    | SANE_HEADERS,
    tweak=st.none() | st.tuples(st.integers(0, 6), st.integers(-2, 2)),
    pad=st.sampled_from([0, 0, 4, -4]),
)
def test_header_property(tmp_path, header, tweak, pad):
    """Accepted exactly when an independent check says the header is sane and the size matches."""
    header = list(header)
    if tweak is not None:
        header[tweak[0]] = max(-(2**31), min(2**31 - 1, header[tweak[0]] + tweak[1]))
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = header
    sane = all(v > 0 for v in (dim, hidden, n_layers, n_heads, n_kv, seq)) and vocab != 0
    sane = sane and dim % n_heads == 0 and n_heads % n_kv == 0 and (dim // n_heads) % 2 == 0
    size = 1028
    if sane:
        kv_dim, v = dim * n_kv // n_heads, abs(vocab)
        per_layer = 2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim
        floats = v * dim * (2 if vocab < 0 else 1) + n_layers * per_layer + dim + seq * dim // n_heads
        if 28 + 4 * floats + pad <= 64 << 20:
            size = 28 + 4 * floats + pad
    should_open = sane and size == 28 + 4 * floats
    path = tmp_path / "h.bin"
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", *header))
        f.truncate(size)  # sparse: big valid sizes cost nothing
    try:
        m = read_checkpoint(path)
    except ModelFormatError as e:
        assert not should_open, e
        assert str(e).startswith(str(path))
        return
    assert should_open
    assert m.metadata["llama.block_count"] == n_layers
    last = max(m.tensors.values(), key=lambda t: t.offset)
    assert last.offset + last.nbytes == size - (0 if vocab < 0 else 4 * seq * dim // n_heads)
    m.close()


# -----------------------------------------------------------------------------
# tokenizer.bin (row 25)


def tokenizer_rejects(tmp_path: Path, tok: bytes, fragment: str) -> None:
    path, *_ = make(tmp_path)
    (tmp_path / "tokenizer.bin").write_bytes(tok)
    with pytest.raises(ModelFormatError, match=fragment) as e:
        open_model_file(path)
    assert str(e.value).startswith(str(tmp_path / "tokenizer.bin"))


def good_tokens(n=32, max_len=8):
    return struct.pack("<i", max_len) + b"".join(struct.pack("<fi", 0.0, 1) + b"a" for _ in range(n))


def test_tokenizer_negative_len(tmp_path):
    tok = good_tokens()[:4] + struct.pack("<fi", 0.0, -1) + b"a" + good_tokens()[13:]
    tokenizer_rejects(tmp_path, tok, r"token 0 length = -1")


def test_tokenizer_len_over_max(tmp_path):
    tok = struct.pack("<i", 3) + struct.pack("<fi", 0.0, 4) + b"abcd" + good_tokens()[13:]
    tokenizer_rejects(tmp_path, tok, r"token 0 length = 4 \(must be 1..max_token_length=3\)")


def test_tokenizer_bad_max_and_truncated_and_extra(tmp_path):
    tokenizer_rejects(tmp_path, struct.pack("<i", -5) + good_tokens()[4:], "max_token_length = -5")
    tokenizer_rejects(tmp_path, good_tokens()[:-3], "cannot hold|truncated")
    tokenizer_rejects(tmp_path, good_tokens(31) + struct.pack("<fi", 0.0, 5) + b"ab", "token 31")
    tokenizer_rejects(tmp_path, good_tokens(33), "follow the 32 tokens")
    tokenizer_rejects(tmp_path, b"", "too small")


def test_tokenizer_not_utf8_or_nan(tmp_path):
    tokenizer_rejects(tmp_path, good_tokens()[:4] + struct.pack("<fi", 0.0, 1) + b"\xff" + good_tokens()[13:],
                      "not valid UTF-8")
    tokenizer_rejects(tmp_path, good_tokens()[:4] + struct.pack("<fi", float("nan"), 1) + b"a" + good_tokens()[13:],
                      "must be finite")
