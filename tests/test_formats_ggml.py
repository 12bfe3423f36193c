"""Legacy GGML/GGMF/GGJT reader: synthetic LLaMA files (F32 for every version, Q4_0/Q5_0 from
gguf.quants for ggjt v3) read back with GGUF names and the exact bytes; hostile files end in one
ModelFormatError whose message starts with the file name."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf as gguf_pkg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_formats import ggml_vocab_texts, llama_ggml_tensors, pack_ggml
from perro_pastor.errors import ModelFormatError
from perro_pastor.formats import open_model_file
from perro_pastor.quant import GGMLType

N_VOCAB, N_EMBD, N_FF, N_LAYER, N_HEAD, N_ROT = 300, 32, 64, 2, 4, 8
HP = (N_VOCAB, N_EMBD, 256, N_HEAD, N_LAYER, N_ROT, 0)
VERSIONS = [("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)]


def small(kind="ggjt", version=3, seed=0, hp=HP, tensors=None, texts=None):
    rng = np.random.default_rng(seed)
    if tensors is None:
        tensors = llama_ggml_tensors(N_VOCAB, N_EMBD, N_FF, N_LAYER, rng)
    return pack_ggml(kind, version, hp, texts or ggml_vocab_texts(hp[0]), tensors), tensors


def rejects(tmp_path: Path, data: bytes, *fragments: str) -> str:
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError) as e:
        open_model_file(path)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    for f in fragments:
        assert f in msg, msg
    return msg


def gguf_name(old: str) -> str:
    top = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
           "output.weight": "output.weight"}
    if old in top:
        return top[old]
    parts = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
             "attention.wo": "attn_output", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
             "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up"}
    _, layer, rest = old.split(".", 2)
    return f"blk.{layer}.{parts[rest.removesuffix('.weight')]}.weight"


@pytest.mark.parametrize("kind, version", VERSIONS)
def test_f32_roundtrip(tmp_path, kind, version):
    data, tensors = small(kind, version)
    path = tmp_path / "m.bin"
    path.write_bytes(data)
    m = open_model_file(path)
    try:
        assert (m.format, m.version, m.metadata["ggml.container"]) == ("ggml", version, kind)
        md = m.metadata
        assert md["general.architecture"] == "llama" and md["llama.embedding_length"] == N_EMBD
        assert md["llama.feed_forward_length"] == N_FF and md["llama.block_count"] == N_LAYER
        assert md["llama.attention.head_count"] == md["llama.attention.head_count_kv"] == N_HEAD
        assert md["llama.rope.dimension_count"] == N_ROT and md["llama.vocab_size"] == N_VOCAB
        assert md["llama.attention.layer_norm_rms_epsilon"] == 1e-6
        assert md["llama.rope.freq_base"] == 10000.0
        toks = md["tokenizer.ggml.tokens"]
        assert toks[:4] == ["<unk>", "<s>", "</s>", "<0x00>"] and toks[3 + 0x0A] == "<0x0A>"
        assert toks[259:264] == ["▁the", "▁perro", "ñu", "日本", "▁▁"]
        types = md["tokenizer.ggml.token_type"]
        assert types[:3] == [2, 3, 3] and set(types[3:259]) == {6} and set(types[259:]) == {1}
        scores = md["tokenizer.ggml.scores"]
        assert scores == ([0.0] * N_VOCAB if kind == "ggml" else [-float(i) for i in range(N_VOCAB)])
        assert len(m.tensors) == 3 + 9 * N_LAYER
        for old, _, dims, raw in tensors:
            t = m.tensors[gguf_name(old)]
            assert t.shape == tuple(dims) and t.qtype == GGMLType.F32
            assert m.tensor_bytes(t.name).tobytes() == raw
            if kind == "ggjt":
                assert t.offset % 32 == 0
    finally:
        m.close()


def quantized_tensors(seed=1):
    rng = np.random.default_rng(seed)
    tensors = llama_ggml_tensors(N_VOCAB, N_EMBD, N_FF, N_LAYER, rng)
    originals = {}
    for i, (name, _, dims, raw) in enumerate(tensors):
        for suffix, qt in (("attention.wq.weight", gguf_pkg.GGMLQuantizationType.Q4_0),
                           ("feed_forward.w1.weight", gguf_pkg.GGMLQuantizationType.Q5_0)):
            if name.endswith(suffix):
                w = np.frombuffer(raw, np.float32).reshape(dims[::-1])
                q = gguf_pkg.quants.quantize(w, qt)
                tensors[i] = (name, int(qt), dims, q.tobytes())
                originals[name] = (qt, q)
    return tensors, originals


def test_ggjt_v3_quantized(tmp_path):
    tensors, originals = quantized_tensors()
    data, _ = small("ggjt", 3, tensors=tensors)
    path = tmp_path / "q.bin"
    path.write_bytes(data)
    m = open_model_file(path)
    assert len(originals) == 2 * N_LAYER
    for old, (qt, q) in originals.items():
        t = m.tensors[gguf_name(old)]
        assert t.qtype == GGMLType(int(qt)) and t.offset % 32 == 0
        got = m.tensor_bytes(t.name)
        assert got.tobytes() == q.tobytes()
        deq = gguf_pkg.quants.dequantize(got.reshape(t.shape[1], -1), qt)
        np.testing.assert_array_equal(deq, gguf_pkg.quants.dequantize(q, qt))


@pytest.mark.parametrize("kind, version, label", [("ggjt", 2, "ggjt v2"), ("ggjt", 1, "ggjt v1"),
                                                  ("ggmf", 1, "ggmf v1"), ("ggml", 0, "unversioned")])
def test_old_quantized_refused(tmp_path, kind, version, label):
    tensors, _ = quantized_tensors()
    data, _ = small(kind, version, tensors=tensors)
    rejects(tmp_path, data, "Q4_0", label, "only read from ggjt v3")


def test_gqa_refused(tmp_path):
    rng = np.random.default_rng(0)
    tensors = llama_ggml_tensors(N_VOCAB, N_EMBD, N_FF, N_LAYER, rng)
    tensors = [(n, t, [N_EMBD, 8], b"\0" * 4 * N_EMBD * 8) if n.endswith("wk.weight") else (n, t, d, r)
               for n, t, d, r in tensors]
    rejects(tmp_path, small(tensors=tensors)[0], "grouped-query", "[32, 8]")


def tensor_header(n_dims, name_len, ttype, dims, name=b"norm.weight"):
    return struct.pack(f"<3i{len(dims)}i", n_dims, name_len, ttype, *dims) + name


def with_tensor(raw_tensor: bytes) -> bytes:
    return pack_ggml("ggjt", 3, HP, ggml_vocab_texts(N_VOCAB), []) + raw_tensor + b"\0" * 256


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (tensor_header(5, 11, 0, [1] * 5), "n_dims = 5"),
        (tensor_header(-1, 11, 0, []), "n_dims = -1"),
        (tensor_header(1, 2**31 - 1, 0, [32]), "name length 2147483647"),
        (tensor_header(1, 0, 0, [32], b""), "name length 0"),
        (tensor_header(1, 64, 0, [32], b"x" * 64), "name length 64"),
        (tensor_header(2, 11, 0, [32, 0]), "every dim must be positive"),
        (tensor_header(2, 11, 0, [32, -3]), "every dim must be positive"),
        (tensor_header(1, 11, 4, [32]), "unsupported tensor type 4"),
        (tensor_header(1, 11, 999, [32]), "unsupported tensor type 999"),
        (tensor_header(1, 11, 2, [33]), "row length 33"),
        (tensor_header(1, 9, 0, [32], b"rope.freq"), "unknown tensor name 'rope.freq'"),
        (tensor_header(1, 29, 0, [32], b"layers.7.attention_norm.weight"[:29]), "unknown tensor"),
        (tensor_header(1, 30, 0, [32], b"layers.7.attention_norm.weight"), "layer 7 but n_layer = 2"),
        (tensor_header(2, 11, 0, [2**31 - 1, 2**31 - 1]), "runs past end of file"),
    ],
)
def test_hostile_tensors(tmp_path, raw, fragment):
    rejects(tmp_path, with_tensor(raw), fragment)


def test_hostile_header_and_vocab(tmp_path):
    texts = ggml_vocab_texts(N_VOCAB)
    rejects(tmp_path, pack_ggml("ggjt", 4, HP, texts, []), "unsupported ggjt version 4")
    rejects(tmp_path, pack_ggml("ggmf", 2, HP, texts, []), "unsupported ggmf version 2")
    rejects(tmp_path, pack_ggml("ggjt", 3, (N_VOCAB, 32, 256, 0, 2, 8, 0), texts, []), "['n_head']")
    rejects(tmp_path, pack_ggml("ggjt", 3, (N_VOCAB, 30, 256, 4, 2, 8, 0), texts, []), "n_embd is not a multiple")
    rejects(tmp_path, pack_ggml("ggjt", 3, (N_VOCAB, 32, 256, 4, 2, 10, 0), texts, []), "n_rot")
    rejects(tmp_path, pack_ggml("ggjt", 3, (2**31 - 1, 32, 256, 4, 2, 8, 0), texts, []), "n_vocab=2147483647")
    huge = pack_ggml("ggjt", 3, (1, 32, 256, 4, 2, 8, 0), [b""], [])
    huge = huge[:-8] + struct.pack("<I", 2**32 - 1) + b"abcd" * 3
    rejects(tmp_path, huge, "token 0 needs 4294967295 bytes")
    bad_utf8 = list(texts)
    bad_utf8[270] = b"\xff\xfe"
    rejects(tmp_path, pack_ggml("ggjt", 3, HP, bad_utf8, []), "token 270 is not valid UTF-8")


def test_duplicate_and_missing_tensors(tmp_path):
    data, tensors = small()
    rejects(tmp_path, small(tensors=tensors + tensors[:1])[0], "duplicate tensor 'tok_embeddings.weight'")
    rejects(tmp_path, small(tensors=tensors[:-1])[0], "1 tensors missing", "blk.1.ffn_up.weight")


def test_truncated_data_message(tmp_path):
    data, tensors = small()
    cut = data[:-100]
    name, _, dims, raw = tensors[-1]
    start = len(data) - len(raw)
    msg = rejects(tmp_path, cut, f"tensor '{name}' data runs past end of file")
    assert f"(needs bytes {start}..{len(data)}, file has {len(cut)})" in msg


def test_truncation_at_every_kth_byte(tmp_path):
    data, _ = small()
    path = tmp_path / "cut.bin"
    for k in list(range(4, len(data), 997)) + [len(data) - 1]:
        path.write_bytes(data[:k])
        with pytest.raises(ModelFormatError) as e:
            open_model_file(path)
        assert str(e.value).startswith(str(path))


def test_a_huge_layer_count_is_refused_at_once(tmp_path):
    """One flipped bit made n_layer 4,194,306 (found by test_mutated_valid_file): the check for
    missing tensors then built a set of 38 million names and ran the machine out of memory. Now
    the header's layer count is bounded (config.MAX_LAYERS) before anything is built from it."""
    data = bytearray(small("ggjt", 3)[0])
    n_layer_at = 8 + 4 * 4  # magic, version, then the int32 hparams (n_vocab n_embd n_mult n_head n_layer ...)
    struct.pack_into("<i", data, n_layer_at, 4_194_306)
    msg = rejects(tmp_path, bytes(data), "n_layer=4194306 is more than 1024 layers")
    assert msg.count("\n") == 0


_SEED = small("ggjt", 3)[0]


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 7)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 10**7),
    header_only=st.booleans(),
)
def test_mutated_valid_file(tmp_path, flips, cut, header_only):
    data = bytearray(_SEED)
    span = 5000 if header_only else len(data)  # the vocab and first tensor headers live up front
    for pos, bit in flips:
        data[pos % span] ^= 1 << bit
    if cut is not None:
        data = data[: cut % len(data)]
    path = tmp_path / "mut.bin"
    path.write_bytes(bytes(data))
    try:
        open_model_file(path).close()
    except ModelFormatError as e:
        assert str(e).startswith(str(path))
