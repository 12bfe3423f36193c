"""The one table mapping GGUF tensor names to llama2.c names, and the checks that every tensor a
Llama forward pass needs is present with the shape the config implies (RELIABILITY.md row 19).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from typing import Callable

from .config import Config
from .errors import ModelFormatError
from .formats import ModelFile, TensorInfo

def tensor(gguf_name: str, shape_of: Callable[[Config], tuple], *, projection: bool = False,
           norm: bool = False, needs: str | None = None):
    """A row of the weight table: where a tensor lives in the file and the shape (GGUF order) the
    config implies. ``projection``: a matrix a layer multiplies by (LoRA may adapt it); ``norm``:
    a vector that must be F32; ``needs``: the ``Family`` flag that requires it (None when the
    family lacks the flag; a file of that family without it is refused, naming it)."""
    spec = dict(gguf_name=gguf_name, shape_of=shape_of, projection=projection, norm=norm, needs=needs)
    return field(default=None, metadata=spec) if needs else field(metadata=spec)


@dataclass(frozen=True, kw_only=True)
class LayerWeights:
    """One layer's tensors, by llama2.c name: THE table of names (every other module derives its
    lists from it). An architecture with extra tensors (a q/k/v bias, more norms) adds rows here,
    each naming the ``Family`` flag that needs it, and the math that uses them (cpu.py)."""
    rms_att_weight: TensorInfo = tensor("blk.{l}.attn_norm.weight", lambda c: (c.dim,), norm=True)
    wq: TensorInfo = tensor("blk.{l}.attn_q.weight", lambda c: (c.dim, c.q_dim), projection=True)
    wk: TensorInfo = tensor("blk.{l}.attn_k.weight", lambda c: (c.dim, c.kv_dim), projection=True)
    wv: TensorInfo = tensor("blk.{l}.attn_v.weight", lambda c: (c.dim, c.kv_dim), projection=True)
    wo: TensorInfo = tensor("blk.{l}.attn_output.weight", lambda c: (c.q_dim, c.dim), projection=True)
    rms_ffn_weight: TensorInfo = tensor("blk.{l}.ffn_norm.weight", lambda c: (c.dim,), norm=True)
    w1: TensorInfo = tensor("blk.{l}.ffn_gate.weight", lambda c: (c.dim, c.hidden_dim), projection=True)
    w2: TensorInfo = tensor("blk.{l}.ffn_down.weight", lambda c: (c.hidden_dim, c.dim), projection=True)
    w3: TensorInfo = tensor("blk.{l}.ffn_up.weight", lambda c: (c.dim, c.hidden_dim), projection=True)
    # what other families add
    bq: TensorInfo | None = tensor("blk.{l}.attn_q.bias", lambda c: (c.q_dim,), norm=True, needs="qkv_bias")
    bk: TensorInfo | None = tensor("blk.{l}.attn_k.bias", lambda c: (c.kv_dim,), norm=True, needs="qkv_bias")
    bv: TensorInfo | None = tensor("blk.{l}.attn_v.bias", lambda c: (c.kv_dim,), norm=True, needs="qkv_bias")
    q_norm: TensorInfo | None = tensor("blk.{l}.attn_q_norm.weight", lambda c: (c.head_size,), norm=True,
                                       needs="qk_norm")
    k_norm: TensorInfo | None = tensor("blk.{l}.attn_k_norm.weight", lambda c: (c.head_size,), norm=True,
                                       needs="qk_norm")
    rms_att_post: TensorInfo | None = tensor("blk.{l}.post_attention_norm.weight", lambda c: (c.dim,), norm=True,
                                             needs="post_norms")
    rms_ffn_post: TensorInfo | None = tensor("blk.{l}.post_ffw_norm.weight", lambda c: (c.dim,), norm=True,
                                             needs="post_norms")


# llama2.c name -> (GGUF name pattern, shape in GGUF order as a function of the config)
LAYER_TENSORS = {f.name: (f.metadata["gguf_name"], f.metadata["shape_of"]) for f in fields(LayerWeights)}
# the matrices of a layer, in table order: wq wk wv wo w1 w2 w3
PROJECTIONS = tuple(f.name for f in fields(LayerWeights) if f.metadata["projection"])
# what other families add to a layer (biases, extra norms), None where the family lacks them
FAMILY_VECTORS = tuple(f.name for f in fields(LayerWeights) if f.metadata["needs"])

GLOBAL_TENSORS = {
    "token_embedding_table": ("token_embd.weight", lambda c: (c.dim, c.vocab_size)),
    "rms_final_weight": ("output_norm.weight", lambda c: (c.dim,)),
}
CLASSIFIER = ("output.weight", lambda c: (c.dim, c.vocab_size))  # absent = tied to the embedding
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.x: per-pair frequency divisors
LONGROPE_SHORT, LONGROPE_LONG = "rope_factors_short.weight", "rope_factors_long.weight"  # Phi-3


@dataclass(frozen=True)
class Weights:
    token_embedding_table: TensorInfo
    layers: tuple[LayerWeights, ...]
    rms_final_weight: TensorInfo
    wcls: TensorInfo  # the embedding table itself when the output layer is tied
    rope_freqs: TensorInfo | None

    def matrices(self) -> list[TensorInfo]:
        """Every matrix the forward pass multiplies by, each once: the layers' projections, then
        the classifier and the embedding table (one tensor when they are tied)."""
        tables = [self.wcls] + ([] if self.wcls is self.token_embedding_table else [self.token_embedding_table])
        return [getattr(l, n) for l in self.layers for n in PROJECTIONS] + tables


# Phi-3 stores q, k and v as one matrix and the gate and up projections as one (gate rows
# first): file name -> the table's names with their row counts, in row order.
FUSED = {
    "blk.{l}.attn_qkv.weight": (("blk.{l}.attn_q.weight", lambda c: c.q_dim),
                                ("blk.{l}.attn_k.weight", lambda c: c.kv_dim),
                                ("blk.{l}.attn_v.weight", lambda c: c.kv_dim)),
    "blk.{l}.ffn_up.weight": (("blk.{l}.ffn_gate.weight", lambda c: c.hidden_dim),
                              ("blk.{l}.ffn_up.weight", lambda c: c.hidden_dim)),
}


def split_fused(mf: ModelFile, cfg: Config) -> None:
    """Give the rows of a fused matrix the names the table reads: each part becomes a
    ``TensorInfo`` over its own rows of the same bytes (a row of any GGML type is contiguous),
    so nothing downstream knows it was fused and nothing is copied."""
    for l in range(cfg.n_layers):
        for fused, parts in FUSED.items():
            info = mf.tensors.get(fused.format(l=l))
            if info is None or parts[0][0].format(l=l) in mf.tensors:
                continue  # stored apart (or split already)
            sizes = [size(cfg) for _, size in parts]
            if len(info.shape) != 2 or info.shape[1] != sum(sizes):
                raise ModelFormatError(f"{mf.path.name}: fused tensor '{info.name}' has shape {list(info.shape)}, "
                                       f"the config implies [{cfg.dim}, {sum(sizes)}]")
            row_bytes = info.nbytes // info.shape[1]
            del mf.tensors[info.name]
            first = 0
            for (name, _), rows in zip(parts, sizes):
                name = name.format(l=l)
                mf.tensors[name] = TensorInfo(name, info.qtype, (info.shape[0], rows),
                                              info.offset + first * row_bytes, rows * row_bytes)
                first += rows


def bind_weights(mf: ModelFile, cfg: Config) -> Weights:
    """Find every tensor the forward pass needs and check its shape against the config."""
    used: set[str] = set()
    if cfg.family.fused:
        split_fused(mf, cfg)

    def take(gguf_name: str, shape_of, must_be_f32: bool = False) -> TensorInfo:
        info = mf.tensors.get(gguf_name)
        if info is None:
            raise ModelFormatError(f"{mf.path.name}: missing tensor '{gguf_name}' ({cfg.arch} needs it)")
        want = shape_of(cfg)
        if tuple(info.shape) != tuple(want):
            raise ModelFormatError(
                f"{mf.path.name}: tensor '{gguf_name}' has shape {list(info.shape)}, "
                f"the config implies {list(want)}"
            )
        if must_be_f32 and info.qtype.name != "F32":
            raise ModelFormatError(f"{mf.path.name}: vector '{gguf_name}' must be F32, is {info.qtype.name}")
        used.add(gguf_name)
        return info

    def wanted(f) -> bool:
        return f.metadata["needs"] is None or getattr(cfg.family, f.metadata["needs"])

    layers = tuple(
        LayerWeights(**{
            f.name: take(f.metadata["gguf_name"].format(l=l), f.metadata["shape_of"], must_be_f32=f.metadata["norm"])
            for f in fields(LayerWeights) if wanted(f)
        })
        for l in range(cfg.n_layers)
    )
    embedding = take(*GLOBAL_TENSORS["token_embedding_table"])
    final_norm = take(*GLOBAL_TENSORS["rms_final_weight"], must_be_f32=True)
    wcls = take(*CLASSIFIER) if CLASSIFIER[0] in mf.tensors else embedding
    rope_freqs = None
    if ROPE_FREQS in mf.tensors:
        rope_freqs = take(ROPE_FREQS, lambda c: (c.rope_dim // 2,), must_be_f32=True)
    elif LONGROPE_SHORT in mf.tensors:
        # Phi-3 LongRoPE: per-pair divisors for contexts up to original_context_length (the short
        # ones, what a game's contexts are); the long ones serve 128k contexts and are not read
        rope_freqs = take(LONGROPE_SHORT, lambda c: (c.rope_dim // 2,), must_be_f32=True)
        take(LONGROPE_LONG, lambda c: (c.rope_dim // 2,), must_be_f32=True)

    extras = sorted(set(mf.tensors) - used)
    if extras:
        warnings.warn(f"{mf.path.name}: ignoring {len(extras)} unused tensors, e.g. {extras[:3]}", stacklevel=2)
    return Weights(embedding, layers, final_norm, wcls, rope_freqs)
