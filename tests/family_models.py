"""Small synthetic models of other families (qwen2, qwen3, phi3, gemma2), written with the ``gguf`` package's
writer under llama.cpp's tensor names and keys, with a real vocabulary from one of llama.cpp's
vocab GGUFs (tests/assets/vocab). The weights are seeded and scaled so the model is confident
(peaked logits): a wrong line of the forward pass then moves perplexity by far more than the
0.5% the comparison with llama.cpp allows.

    python tests/family_models.py qwen3 /tmp/qwen3-tiny.gguf     # the file llama.cpp is run on
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

VOCAB = Path(__file__).parent / "assets" / "vocab"
SHAPES = dict(dim=64, hidden=128, n_layers=2, n_heads=4, n_kv_heads=2)
VOCAB_FILES = {"qwen2": "ggml-vocab-qwen2.gguf", "qwen3": "ggml-vocab-qwen2.gguf",
               "phi3": "ggml-vocab-phi-3.gguf", "phi3-longrope": "ggml-vocab-phi-3.gguf",
               "gemma2": "ggml-vocab-llama-spm.gguf", "gemma2-27b": "ggml-vocab-llama-spm.gguf"}
HEAD_DIM = {"qwen3": 32, "gemma2": 32}  # heads wider than dim / n_heads (q_dim 128 on a 64-wide model)
GEMMA2_WINDOW = 16  # so that the sliding window matters within a 64-token chunk


def write_family_model(name: str, path: Path, seed: int = 0) -> Path:
    """``name``: an architecture, or "phi3-longrope" (Phi-3.5's LongRoPE: short and long
    per-pair rope divisors and an attention factor), or "gemma2-27b" (46 layers: llama.cpp then
    scales queries by 1/sqrt(dim / n_heads), as Gemma 2 27B does)."""
    import gguf

    arch = name.split("-")[0]

    from perro_pastor.formats import open_model_file

    vocab = open_model_file(VOCAB / VOCAB_FILES[name])
    rng = np.random.default_rng(seed)
    d, hidden, n_layers, n_heads, n_kv = (SHAPES[k] for k in ("dim", "hidden", "n_layers", "n_heads", "n_kv_heads"))
    if name == "gemma2-27b":
        n_layers = 46
    head = HEAD_DIM.get(arch, d // n_heads)
    n_vocab = len(vocab.metadata["tokenizer.ggml.tokens"])

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(256)
    writer.add_embedding_length(d)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(hidden)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    if arch in HEAD_DIM:  # (gemma2-27b: heads of 32 on a 64-wide model, so the two scales differ)
        writer.add_key_length(head)
        writer.add_value_length(head)
    if arch == "gemma2":
        writer.add_sliding_window(GEMMA2_WINDOW)
        writer.add_attn_logit_softcapping(5.0)  # low caps, so that they bite on these weights
        writer.add_final_logit_softcapping(3.0)
    for key, value in vocab.metadata.items():
        if key.startswith("tokenizer.") and key != "tokenizer.chat_template":
            type_name = vocab.metadata_types[key]
            if type_name.startswith("ARRAY["):
                vtype, sub = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType[type_name[6:-1]]
            else:
                vtype, sub = gguf.GGUFValueType[type_name], None
            writer.add_key_value(key, value.tolist() if isinstance(value, np.ndarray) else value, vtype, sub_type=sub)
    vocab.close()

    def matrix(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def vector(n: int, around: float = 1.0, spread: float = 0.1) -> np.ndarray:
        return (around + spread * rng.standard_normal(n)).astype(np.float32)

    if name == "phi3-longrope":  # the long divisors would be wrong here: a 256-token context is short
        writer.add_rope_scaling_attn_factors(1.19)
        writer.add_tensor("rope_factors_short.weight", (1.0 + rng.random(head // 2) * 3).astype(np.float32))
        writer.add_tensor("rope_factors_long.weight", (10.0 + rng.random(head // 2) * 50).astype(np.float32))
    writer.add_tensor("token_embd.weight", (rng.standard_normal((n_vocab, d)) * 0.25).astype(np.float32))
    writer.add_tensor("output_norm.weight", vector(d))
    for l in range(n_layers):
        blk = f"blk.{l}."
        writer.add_tensor(blk + "attn_norm.weight", vector(d))
        q, k, v = matrix(n_heads * head, d, 2.0), matrix(n_kv * head, d, 2.0), matrix(n_kv * head, d)
        if arch == "phi3":  # one fused matrix, q rows then k then v
            writer.add_tensor(blk + "attn_qkv.weight", np.concatenate([q, k, v]))
        else:
            writer.add_tensor(blk + "attn_q.weight", q)
            writer.add_tensor(blk + "attn_k.weight", k)
            writer.add_tensor(blk + "attn_v.weight", v)
        if arch == "qwen2":
            writer.add_tensor(blk + "attn_q.bias", vector(n_heads * head, 0.0, 0.5))
            writer.add_tensor(blk + "attn_k.bias", vector(n_kv * head, 0.0, 0.5))
            writer.add_tensor(blk + "attn_v.bias", vector(n_kv * head, 0.0, 0.5))
        if arch == "qwen3":
            writer.add_tensor(blk + "attn_q_norm.weight", vector(head))
            writer.add_tensor(blk + "attn_k_norm.weight", vector(head))
        writer.add_tensor(blk + "attn_output.weight", matrix(d, n_heads * head))
        if arch == "gemma2":
            writer.add_tensor(blk + "post_attention_norm.weight", vector(d))
            writer.add_tensor(blk + "post_ffw_norm.weight", vector(d))
        writer.add_tensor(blk + "ffn_norm.weight", vector(d))
        gate, up = matrix(hidden, d), matrix(hidden, d)
        if arch == "phi3":  # gate rows, then up rows, in one matrix named ffn_up
            writer.add_tensor(blk + "ffn_up.weight", np.concatenate([gate, up]))
        else:
            writer.add_tensor(blk + "ffn_gate.weight", gate)
            writer.add_tensor(blk + "ffn_up.weight", up)
        writer.add_tensor(blk + "ffn_down.weight", matrix(d, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))
    print(write_family_model(sys.argv[1], Path(sys.argv[2])))
