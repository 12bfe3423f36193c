"""Make a "shape twin" of a GGUF model: the same header, metadata, vocabulary and tensor table, with
freshly quantized random weights. Speed depends only on shapes and types, so a twin benchmarks like
the original where the original cannot travel (the GPU machine takes at most 64 MiB of files).

    python benchmarks/shape_twin.py header default twin.header     # ~2 MB: header + tensor table
    python benchmarks/shape_twin.py fill twin.header twin.gguf       # on the other machine
    python benchmarks/shape_twin.py llama1b twin-1b.gguf [Q4_1]      # a 1.1B Llama, built from nothing

``llama1b`` writes TinyLlama-1.1B's shape (dim 2048, 22 layers, 32 query / 4 key-value heads,
hidden 5632, Llama-2's 32k SentencePiece vocabulary from llama.cpp's vocab-only test file) with
random weights: how cost grows with the model, where no 1B file is at hand.
"""

from __future__ import annotations

import json
import struct
import sys

import numpy as np


def header(src: str, out: str) -> None:
    from perro_pastor.formats import open_model_file
    from perro_pastor.paths import resolve_model

    mf = open_model_file(resolve_model(src))
    data_start = min(t.offset for t in mf.tensors.values())
    table = [[t.name, t.qtype.name, list(t.shape), t.offset, t.nbytes] for t in mf.tensors.values()]
    size = mf.path.stat().st_size
    with open(mf.path, "rb") as f:
        head = f.read(data_start)
    blob = json.dumps({"size": size, "tensors": table}).encode()
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + head)


def fill(head_path: str, out: str) -> None:
    import gguf

    with open(head_path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        info = json.loads(f.read(n))
        head = f.read()
    rng = np.random.default_rng(0)
    with open(out, "wb") as f:
        f.write(head)
        f.truncate(info["size"])
        for name, qtype, shape, offset, nbytes in info["tensors"]:
            weights = (rng.standard_normal(tuple(reversed(shape))) * 0.05).astype(np.float32)
            if qtype == "F32":
                data = (1.0 + weights).astype(np.float32).tobytes()
            else:
                data = gguf.quants.quantize(weights, gguf.GGMLQuantizationType[qtype]).tobytes()
            assert len(data) == nbytes, (name, len(data), nbytes)
            f.seek(offset)
            f.write(data)


def llama1b(out: str, qtype: str = "Q4_1") -> None:
    import gguf

    from perro_pastor.formats import open_model_file

    vocab = open_model_file("tests/assets/vocab/ggml-vocab-llama-spm.gguf")
    dim, hidden, n_layers, n_heads, n_kv_heads, n_vocab = 2048, 5632, 22, 32, 4, 32000
    w = gguf.GGUFWriter(out, "llama")
    w.add_context_length(2048)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(hidden)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_rope_dimension_count(dim // n_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab.metadata["tokenizer.ggml.tokens"])
    w.add_token_scores(vocab.metadata["tokenizer.ggml.scores"])
    w.add_token_types(vocab.metadata["tokenizer.ggml.token_type"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    kind = gguf.GGMLQuantizationType[qtype]

    def matrix(name: str, rows: int, cols: int) -> None:
        weights = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
        w.add_tensor(name, gguf.quants.quantize(weights, kind), raw_dtype=kind)

    kv_dim = dim // n_heads * n_kv_heads
    matrix("token_embd.weight", n_vocab, dim)
    for l in range(n_layers):
        w.add_tensor(f"blk.{l}.attn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(f"blk.{l}.ffn_norm.weight", np.ones(dim, np.float32))
        for name, rows, cols in (("attn_q", dim, dim), ("attn_k", kv_dim, dim), ("attn_v", kv_dim, dim),
                                 ("attn_output", dim, dim), ("ffn_gate", hidden, dim),
                                 ("ffn_up", hidden, dim), ("ffn_down", dim, hidden)):
            matrix(f"blk.{l}.{name}.weight", rows, cols)
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    matrix("output.weight", n_vocab, dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    {"header": header, "fill": fill, "llama1b": llama1b}[sys.argv[1]](*sys.argv[2:])
