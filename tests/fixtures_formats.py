"""Builders for model-format test files: valid ones (GGUF through the `gguf` package's writer, the
oracle) and hostile ones packed by hand with `struct`, plus llama2.c and legacy GGML files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# GGUF value type codes (spec)
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


# -----------------------------------------------------------------------------
# GGUF, valid, through the writer


def write_small_gguf(path: Path, seed: int = 0, alignment: int | None = None) -> dict:
    """A small valid GGUF: a few metadata kinds, an F32, an F16 and a Q4_0 tensor.
    Returns what was written so tests can compare."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_rope_freq_base(10000.0)
    w.add_bool("test.flag", True)
    w.add_int64("test.neg", -5)
    w.add_array("tokenizer.ggml.tokens", ["<unk>", "▁hola", "perro", "ñ"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.25, -3.0])
    w.add_array("tokenizer.ggml.token_type", [2, 1, 1, 1])
    norm = rng.standard_normal(64).astype(np.float32)
    emb = rng.standard_normal((4, 64)).astype(np.float16)
    wq = rng.standard_normal((3, 64)).astype(np.float32)
    q4 = gguf.quants.quantize(wq, gguf.GGMLQuantizationType.Q4_0)
    w.add_tensor("output_norm.weight", norm)
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("blk.0.attn_q.weight", q4, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"output_norm.weight": norm, "token_embd.weight": emb, "blk.0.attn_q.weight": q4}


# -----------------------------------------------------------------------------
# GGUF, by hand


def gstr(b: bytes | str) -> bytes:
    if isinstance(b, str):
        b = b.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key: bytes | str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, v: int) -> bytes:
    return kv(key, U32, struct.pack("<I", v))


def kv_str(key: str, s: bytes | str) -> bytes:
    return kv(key, STR, gstr(s))


def tinfo(name: bytes | str, dims: list[int], ttype: int, offset: int) -> bytes:
    b = gstr(name) + struct.pack("<I", len(dims))
    b += b"".join(struct.pack("<Q", d) for d in dims)
    return b + struct.pack("<IQ", ttype, offset)


def pack_gguf(
    kvs: list[bytes] = (),
    tinfos: list[bytes] = (),
    data: bytes = b"",
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
    magic: bytes = b"GGUF",
) -> bytes:
    n_kv = len(kvs) if n_kv is None else n_kv
    n_tensors = len(tinfos) if n_tensors is None else n_tensors
    out = magic + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + b"".join(tinfos)
    if tinfos or data:
        out += b"\0" * (-len(out) % alignment) + data
    return out


# -----------------------------------------------------------------------------
# llama2.c


def llama2c_tensors(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, rng):
    """The weights in file order as (name, array in PyTorch (out, in) layout)."""
    head_size = dim // n_heads
    kv_dim = dim * n_kv_heads // n_heads

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    L = n_layers
    return [
        ("tok_embeddings", r(vocab_size, dim)),
        ("rms_att", r(L, dim)),
        ("wq", r(L, dim, dim)),
        ("wk", r(L, kv_dim, dim)),
        ("wv", r(L, kv_dim, dim)),
        ("wo", r(L, dim, dim)),
        ("rms_ffn", r(L, dim)),
        ("w1", r(L, hidden_dim, dim)),
        ("w2", r(L, dim, hidden_dim)),
        ("w3", r(L, hidden_dim, dim)),
        ("rms_final", r(dim)),
        ("freq_real", r(seq_len * head_size // 2)),
        ("freq_imag", r(seq_len * head_size // 2)),
    ]


def write_llama2c(
    path: Path,
    dim=64,
    hidden_dim=96,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=32,
    seq_len=16,
    shared=True,
    seed=0,
    version=0,
) -> dict[str, np.ndarray]:
    """Write a llama2.c checkpoint (legacy, or the v1 'ak42' export); returns weights by name."""
    rng = np.random.default_rng(seed)
    ws = dict(llama2c_tensors(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, rng))
    if not shared:
        ws["wcls"] = rng.standard_normal((vocab_size, dim)).astype(np.float32)
    with open(path, "wb") as f:
        if version == 0:
            v = vocab_size if shared else -vocab_size
            f.write(struct.pack("<7i", dim, hidden_dim, n_layers, n_heads, n_kv_heads, v, seq_len))
            order = [k for k in ws]
        else:
            f.write(struct.pack("<Ii", 0x616B3432, version))
            f.write(struct.pack("<7i", dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len))
            f.write(struct.pack("<B", int(shared)))
            f.write(b"\0" * (256 - f.tell()))
            order = ["rms_att", "rms_ffn", "rms_final", "tok_embeddings", "wq", "wk", "wv", "wo",
                     "w1", "w2", "w3"] + ([] if shared else ["wcls"])
        for k in order:
            f.write(ws[k].tobytes())
    return ws


def llama_pieces(vocab_size: int) -> list[str]:
    """SentencePiece-style pieces: <unk>, <s>, </s>, some byte pieces, then words."""
    pieces = ["<unk>", "<s>", "</s>"]
    pieces += [f"<0x{b:02X}>" for b in range(min(8, vocab_size - 3))]
    words = ["▁the", "▁perro", "▁pastor", "ñu", "a", "b", "▁▁", "▁x▁y", "é", "日本"]
    i = 0
    while len(pieces) < vocab_size:
        pieces.append(words[i] if i < len(words) else f"▁w{i}")
        i += 1
    return pieces[:vocab_size]


def write_tokenizer_bin(path: Path, pieces: list[str], seed: int = 0) -> list[float]:
    """llama2.c tokenizer.bin as its tokenizer.py exports it (spaces for '▁', BOS/EOS padded)."""
    rng = np.random.default_rng(seed)
    scores = [float(np.float32(s)) for s in rng.standard_normal(len(pieces))]
    texts = []
    for i, p in enumerate(pieces):
        t = {1: "\n<s>\n", 2: "\n</s>\n"}.get(i, p).replace("▁", " ")
        texts.append(t.encode())
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(t) for t in texts)))
        for t, s in zip(texts, scores):
            f.write(struct.pack("<fi", s, len(t)) + t)
    return scores


# -----------------------------------------------------------------------------
# legacy GGML / GGMF / GGJT

GGML_MAGIC = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}


def ggml_vocab_texts(n_vocab: int) -> list[bytes]:
    """A LLaMA vocab as the old converters wrote it: ' ⁇ ' unknown, empty controls, raw bytes."""
    texts = [" \u2047 ".encode(), b"", b""]
    texts += [bytes([b]) for b in range(min(256, n_vocab - 3))]
    words = [" the", " perro", "ñu", "日本", "  "]
    i = 0
    while len(texts) < n_vocab:
        texts.append((words[i] if i < len(words) else f" w{i}").encode())
        i += 1
    return texts[:n_vocab]


def ggml_tensor(name: str, ttype: int, dims: list[int], data: bytes) -> tuple:
    return (name, ttype, dims, data)


def llama_ggml_tensors(n_vocab, n_embd, n_ff, n_layer, rng) -> list[tuple]:
    """F32 LLaMA tensors with the old names; dims row length first."""

    def t(name, *dims):
        return (name, 0, list(dims), rng.standard_normal(dims[::-1]).astype(np.float32).tobytes())

    out = [t("tok_embeddings.weight", n_embd, n_vocab), t("norm.weight", n_embd),
           t("output.weight", n_embd, n_vocab)]
    for i in range(n_layer):
        p = f"layers.{i}."
        out += [t(p + "attention.wq.weight", n_embd, n_embd), t(p + "attention.wk.weight", n_embd, n_embd),
                t(p + "attention.wv.weight", n_embd, n_embd), t(p + "attention.wo.weight", n_embd, n_embd),
                t(p + "attention_norm.weight", n_embd), t(p + "ffn_norm.weight", n_embd),
                t(p + "feed_forward.w1.weight", n_embd, n_ff), t(p + "feed_forward.w2.weight", n_ff, n_embd),
                t(p + "feed_forward.w3.weight", n_embd, n_ff)]
    return out


def pack_ggml(kind: str, version: int, hparams: tuple, texts: list[bytes], tensors: list[tuple],
              scores: list[float] | None = None) -> bytes:
    out = bytearray(struct.pack("<I", GGML_MAGIC[kind]))
    if kind != "ggml":
        out += struct.pack("<I", version)
    out += struct.pack("<7i", *hparams)
    for i, t in enumerate(texts):
        out += struct.pack("<I", len(t)) + t
        if kind != "ggml":
            out += struct.pack("<f", -float(i) if scores is None else scores[i])
    for name, ttype, dims, data in tensors:
        nb = name.encode() if isinstance(name, str) else name
        out += struct.pack(f"<3i{len(dims)}i", len(dims), len(nb), ttype, *dims) + nb
        if kind == "ggjt":
            out += b"\0" * (-len(out) % 32)
        out += data
    return bytes(out)
