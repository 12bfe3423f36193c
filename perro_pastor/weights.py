"""The one table mapping GGUF tensor names to llama2.c names, and the checks that every tensor a
Llama forward pass needs is present with the shape the config implies (RELIABILITY.md row 19).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .config import Config
from .errors import ModelFormatError
from .formats import ModelFile, TensorInfo

# llama2.c name -> (GGUF name, shape in GGUF order as a function of the config)
LAYER_TENSORS = {
    "rms_att_weight": ("blk.{l}.attn_norm.weight", lambda c: (c.dim,)),
    "wq": ("blk.{l}.attn_q.weight", lambda c: (c.dim, c.dim)),
    "wk": ("blk.{l}.attn_k.weight", lambda c: (c.dim, c.kv_dim)),
    "wv": ("blk.{l}.attn_v.weight", lambda c: (c.dim, c.kv_dim)),
    "wo": ("blk.{l}.attn_output.weight", lambda c: (c.dim, c.dim)),
    "rms_ffn_weight": ("blk.{l}.ffn_norm.weight", lambda c: (c.dim,)),
    "w1": ("blk.{l}.ffn_gate.weight", lambda c: (c.dim, c.hidden_dim)),
    "w2": ("blk.{l}.ffn_down.weight", lambda c: (c.hidden_dim, c.dim)),
    "w3": ("blk.{l}.ffn_up.weight", lambda c: (c.dim, c.hidden_dim)),
}
GLOBAL_TENSORS = {
    "token_embedding_table": ("token_embd.weight", lambda c: (c.dim, c.vocab_size)),
    "rms_final_weight": ("output_norm.weight", lambda c: (c.dim,)),
}
CLASSIFIER = ("output.weight", lambda c: (c.dim, c.vocab_size))  # absent = tied to the embedding
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.x: per-pair frequency divisors
NORM_NAMES = ("rms_att_weight", "rms_ffn_weight")
IGNORED_EXTRAS = ("rope_freqs.weight",)


@dataclass(frozen=True)
class LayerWeights:
    rms_att_weight: TensorInfo
    wq: TensorInfo
    wk: TensorInfo
    wv: TensorInfo
    wo: TensorInfo
    rms_ffn_weight: TensorInfo
    w1: TensorInfo
    w2: TensorInfo
    w3: TensorInfo


@dataclass(frozen=True)
class Weights:
    token_embedding_table: TensorInfo
    layers: tuple[LayerWeights, ...]
    rms_final_weight: TensorInfo
    wcls: TensorInfo  # the embedding table itself when the output layer is tied
    rope_freqs: TensorInfo | None


def bind_weights(mf: ModelFile, cfg: Config) -> Weights:
    """Find every tensor the forward pass needs and check its shape against the config."""
    used: set[str] = set()

    def take(gguf_name: str, shape_of, must_be_f32: bool = False) -> TensorInfo:
        info = mf.tensors.get(gguf_name)
        if info is None:
            raise ModelFormatError(f"{mf.path.name}: missing tensor '{gguf_name}'")
        want = shape_of(cfg)
        if tuple(info.shape) != tuple(want):
            raise ModelFormatError(
                f"{mf.path.name}: tensor '{gguf_name}' has shape {list(info.shape)}, "
                f"the config implies {list(want)}"
            )
        if must_be_f32 and info.qtype.name != "F32":
            raise ModelFormatError(f"{mf.path.name}: norm tensor '{gguf_name}' must be F32, is {info.qtype.name}")
        used.add(gguf_name)
        return info

    layers = tuple(
        LayerWeights(**{
            name: take(pattern.format(l=l), shape_of, must_be_f32=name in NORM_NAMES)
            for name, (pattern, shape_of) in LAYER_TENSORS.items()
        })
        for l in range(cfg.n_layers)
    )
    embedding = take(*GLOBAL_TENSORS["token_embedding_table"])
    final_norm = take(*GLOBAL_TENSORS["rms_final_weight"], must_be_f32=True)
    wcls = take(*CLASSIFIER) if CLASSIFIER[0] in mf.tensors else embedding
    rope_freqs = None
    if ROPE_FREQS in mf.tensors:
        rope_freqs = take(ROPE_FREQS, lambda c: (c.rope_dim // 2,), must_be_f32=True)

    extras = sorted(set(mf.tensors) - used)
    if extras:
        warnings.warn(f"{mf.path.name}: ignoring {len(extras)} unused tensors, e.g. {extras[:3]}", stacklevel=2)
    return Weights(embedding, layers, final_norm, wcls, rope_freqs)
