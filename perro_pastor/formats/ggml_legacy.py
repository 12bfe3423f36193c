"""Legacy llama.cpp files from before GGUF (2023): 'ggml', 'ggmf' v1 and 'ggjt' v1-v3.

Layout, all little-endian: uint32 magic (``ggml`` 0x67676d6c has no version; ``ggmf`` 0x67676d66
is version 1; ``ggjt`` 0x67676a74 is 1..3), then 7 int32 hparams ``n_vocab, n_embd, n_mult,
n_head, n_layer, n_rot, ftype``, then the vocab (uint32 length, bytes, and an f32 score except in
unversioned 'ggml'), then tensors until end of file: int32 n_dims, int32 name length, int32 type,
n_dims int32 dims (row length first, as in GGUF), the name, padding to a 32-byte file offset
(ggjt only, so the data can be mapped), and the data.

What is accepted: F32 and F16 tensors in every version; quantized tensors only in ggjt v3. The
quant blocks changed twice without a new file type (v2 changed the Q4/Q5 bit layout, v3 turned the
Q4/Q8 block scales from f32 into f16), so older quantized bytes would decode to garbage; they are
refused with a message naming the version.

What the files do not store, and what we assume (documented defaults of llama.cpp's legacy loader
for LLaMA-1): rms epsilon 1e-6, rope base 10000, context length 2048, and n_kv_heads = n_head.
GQA models (LLaMA-2 70B) stored their KV head count nowhere, so a wk whose shape disagrees is
refused rather than guessed. feed_forward_length is read from w1's shape (n_mult only rounded it).
Weights come from Meta's checkpoints, whose rope pairs match GGUF ``llama``: no permutation.

The vocab is a SentencePiece LLaMA vocab written by the old converters: '▁' as spaces, the
unknown token as " ⁇ ", control tokens as empty strings and the 256 byte tokens (ids 3..258) as
the raw byte. Those are turned back into pieces ("<unk>", "<s>", "</s>", "<0x0A>").
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

from ..config import MAX_LAYERS
from ..quant import TYPE_INFO, GGMLType, type_name
from .model_file import ByteReader, ModelFile, TensorInfo, parse_mapped
from .llama2c import llama_vocab_metadata, token_type

MAGICS = {
    struct.pack("<I", 0x67676D6C): "ggml",
    struct.pack("<I", 0x67676D66): "ggmf",
    struct.pack("<I", 0x67676A74): "ggjt",
}
HPARAMS = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
GGJT_ALIGNMENT = 32
MAX_NAME_BYTES = 63
MAX_DIMS = 4
RMS_EPS = 1e-6  # llama.cpp's legacy default (LLaMA-1); LLaMA-2 used 1e-5 but files can't say
ROPE_BASE = 10000.0
CONTEXT_LENGTH = 2048  # LLaMA-1's training context; legacy files do not store one
UNK_TEXT = " \u2047 ".encode()
_LAYER_NAME = re.compile(
    r"layers\.(\d{1,6})\.(attention\.w[qkvo]|attention_norm|feed_forward\.w[123]|ffn_norm)\.weight\Z"
)
_TO_GGUF = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
    "attention.wo": "attn_output", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
}
_TOP_LEVEL = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}


def read_ggml(path: Path) -> ModelFile:
    """Parse and validate a legacy ggml/ggmf/ggjt file; tensor bytes stay in the mapping."""
    return parse_mapped(path, _parse)


def _parse(r: ByteReader, mm: Any) -> ModelFile:
    magic = r.take(4, "magic") if r.size >= 4 else r.fail(f"file too small ({r.size} bytes)")
    kind = MAGICS.get(magic) or r.fail(f"bad magic {magic!r}: not a ggml/ggmf/ggjt file")
    version = 0
    if kind != "ggml":
        version = r.u32("version")
        if (kind == "ggmf" and version != 1) or (kind == "ggjt" and not 1 <= version <= 3):
            r.fail(f"unsupported {kind} version {version} (ggmf: 1, ggjt: 1..3)")
    hp = dict(zip(HPARAMS, (r.i32(f"hparam {name}") for name in HPARAMS)))
    _check_hparams(r, hp)
    label = f"{kind} v{version}" if version else "ggml (unversioned)"

    vocab_md, vocab_ty = _read_vocab(r, hp["n_vocab"], with_scores=kind != "ggml")
    tensors = _read_tensors(r, kind, version, label, hp)
    md, ty = _metadata(r, hp, tensors)
    md.update(vocab_md)
    ty.update(vocab_ty)
    md["ggml.container"], ty["ggml.container"] = kind, "STRING"
    return ModelFile(r.path, "ggml", version, md, tensors, mm, ty)


def _fmt(hp: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in hp.items())


def _check_hparams(r: ByteReader, hp: dict[str, int]) -> None:
    bad = [k for k, v in hp.items() if v <= 0 and k != "ftype"]
    if bad or hp["ftype"] < 0:
        r.fail(f"hparams {bad or ['ftype']} out of range ({_fmt(hp)})")
    if hp["n_layer"] > MAX_LAYERS:  # (checks below build a set of every layer's tensor names)
        r.fail(f"n_layer={hp['n_layer']} is more than {MAX_LAYERS} layers ({_fmt(hp)})")
    if hp["n_embd"] % hp["n_head"]:
        r.fail(f"n_embd is not a multiple of n_head ({_fmt(hp)})")
    head_size = hp["n_embd"] // hp["n_head"]
    if hp["n_rot"] > head_size or hp["n_rot"] % 2:
        r.fail(f"n_rot must be even and at most the head size {head_size} ({_fmt(hp)})")


def _read_vocab(r: ByteReader, n_vocab: int, with_scores: bool) -> tuple[dict, dict]:
    least = n_vocab * (8 if with_scores else 4)
    if least > r.remaining:
        r.fail(f"n_vocab={n_vocab} needs at least {least} bytes but only {r.remaining} remain")
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        n = r.u32(f"length of token {i}")
        raw = r.take(n, f"token {i}")
        scores.append(r.f32(f"score of token {i}") if with_scores else 0.0)
        piece = _piece(r, i, raw)
        tokens.append(piece)
        types.append(token_type(i, piece))
    return llama_vocab_metadata(tokens, scores, types)


def _piece(r: ByteReader, i: int, raw: bytes) -> str:
    """Undo the old converters' rewriting of SentencePiece pieces (see the module docstring)."""
    if i == 0 and raw in (UNK_TEXT, b"<unk>"):
        return "<unk>"
    if i == 1 and raw in (b"", b"<s>"):
        return "<s>"
    if i == 2 and raw in (b"", b"</s>"):
        return "</s>"
    if 3 <= i < 259 and raw == bytes([i - 3]):
        return f"<0x{i - 3:02X}>"
    if not raw:
        r.fail(f"token {i} is empty")
    try:
        return raw.decode("utf-8").replace(" ", "\u2581")
    except UnicodeDecodeError:
        r.fail(f"token {i} is not valid UTF-8: {raw[:40]!r}")


def _read_tensors(r: ByteReader, kind: str, version: int, label: str, hp: dict) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    while r.pos < r.size:  # every tensor consumes >= 12 bytes, so this ends
        n_dims = r.i32("tensor n_dims")
        name_len = r.i32("tensor name length")
        code = r.i32("tensor type")
        if not 1 <= n_dims <= MAX_DIMS:
            r.fail(f"tensor at offset {r.pos - 12} has n_dims = {n_dims} (must be 1..{MAX_DIMS})")
        if not 1 <= name_len <= MAX_NAME_BYTES:
            r.fail(f"tensor at offset {r.pos - 12} has name length {name_len} (must be 1..{MAX_NAME_BYTES})")
        shape = tuple(r.i32("tensor dim") for _ in range(n_dims))
        raw = r.take(name_len, "tensor name")
        try:
            old = raw.decode("ascii")
        except UnicodeDecodeError:
            r.fail(f"tensor name is not ASCII: {raw!r}")
        if any(d <= 0 for d in shape):
            r.fail(f"tensor '{old}' has shape {list(shape)}: every dim must be positive")
        name = _gguf_name(r, old, hp["n_layer"])
        if name in tensors:
            r.fail(f"duplicate tensor '{old}'")

        if code not in TYPE_INFO or code == GGMLType.BF16:
            r.fail(f"tensor '{old}': unsupported tensor type {code} ({type_name(code)})")
        qtype = GGMLType(code)
        if qtype not in (GGMLType.F32, GGMLType.F16) and (kind, version) != ("ggjt", 3):
            r.fail(
                f"tensor '{old}' is {qtype.name} in a {label} file: quantized blocks are only "
                "read from ggjt v3 (their layout changed in v2 and v3); re-quantize from F16 "
                "or convert to GGUF"
            )
        info = TYPE_INFO[qtype]
        if shape[0] % info.block_size:
            r.fail(f"tensor '{old}' ({qtype.name}) row length {shape[0]} is not a multiple of "
                   f"the block size {info.block_size}")
        n = 1
        for d in shape:
            n *= d
        nbytes = n // info.block_size * info.type_size
        if kind == "ggjt":
            r.pos = -(-r.pos // GGJT_ALIGNMENT) * GGJT_ALIGNMENT
        start, end = r.pos, r.pos + nbytes
        if end > r.size:
            r.fail(f"tensor '{old}' data runs past end of file (needs bytes {start}..{end}, "
                   f"file has {r.size}): truncated or corrupt")
        tensors[name] = TensorInfo(name, qtype, shape, start, nbytes)
        r.pos = end
    return tensors


def _gguf_name(r: ByteReader, old: str, n_layer: int) -> str:
    if old in _TOP_LEVEL:
        return _TOP_LEVEL[old]
    m = _LAYER_NAME.match(old)
    if not m:
        r.fail(f"unknown tensor name '{old}' (not a LLaMA tensor)")
    layer = int(m.group(1))
    if layer >= n_layer:
        r.fail(f"tensor '{old}' names layer {layer} but n_layer = {n_layer}")
    return f"blk.{layer}.{_TO_GGUF[m.group(2)]}.weight"


def _metadata(r: ByteReader, hp: dict, tensors: dict[str, TensorInfo]) -> tuple[dict, dict]:
    n_embd, n_head = hp["n_embd"], hp["n_head"]
    # Tensors run to end of file, so a download cut at a tensor boundary still parses: the full
    # set is known for LLaMA, so check it here.
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(hp["n_layer"]) for part in _TO_GGUF.values()
    }
    missing = sorted(expected - tensors.keys())
    if missing:
        r.fail(f"{len(missing)} tensors missing (truncated file?), e.g. {missing[:3]}")
    w1 = tensors.get("blk.0.ffn_gate.weight") or r.fail("missing tensor layers.0.feed_forward.w1.weight")
    if w1.shape[0] != n_embd or len(w1.shape) != 2:
        r.fail(f"layers.0.feed_forward.w1.weight has shape {list(w1.shape)}; expected [{n_embd}, n_ff]")
    for layer in range(hp["n_layer"]):
        wk = tensors.get(f"blk.{layer}.attn_k.weight")
        if wk is not None and wk.shape != (n_embd, n_embd):
            r.fail(
                f"layers.{layer}.attention.wk.weight has shape {list(wk.shape)}, not "
                f"[{n_embd}, {n_embd}]: a grouped-query model, whose KV head count legacy files "
                "do not store; convert it to GGUF"
            )
    u32 = {
        "llama.embedding_length": n_embd,
        "llama.feed_forward_length": w1.shape[1],
        "llama.block_count": hp["n_layer"],
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head,
        "llama.context_length": CONTEXT_LENGTH,
        "llama.rope.dimension_count": hp["n_rot"],
        "llama.vocab_size": hp["n_vocab"],
        "general.file_type": hp["ftype"],
    }
    md: dict[str, Any] = {"general.architecture": "llama", **u32}
    ty = {"general.architecture": "STRING", **{k: "UINT32" for k in u32}}
    md["llama.attention.layer_norm_rms_epsilon"] = RMS_EPS
    md["llama.rope.freq_base"] = ROPE_BASE
    ty["llama.attention.layer_norm_rms_epsilon"] = ty["llama.rope.freq_base"] = "FLOAT32"
    return md, ty
