"""llama2.c checkpoints (karpathy's ``run.c`` format) and their ``tokenizer.bin``.

Two layouts are read, both float32 and little-endian:

- legacy (no magic): 7 int32 ``dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len`` (a negative vocab_size means an unshared classifier ``wcls`` is stored last), then
  token_embedding_table, rms_att_weight, wq, wk, wv, wo, rms_ffn_weight, w1, w2, w3,
  rms_final_weight, freq_cis_real, freq_cis_imag[, wcls]. Each per-layer weight is stored for all
  layers at once.
- version 1 (``export.py --version 1``): uint32 magic 0x616b3432 ("ak42"), int32 version, the same
  7 ints, a uint8 shared-classifier flag, zero padding to 256 bytes, then the norms of every layer,
  the final norm, the embedding, wq..w3, [wcls]. No rope tables.

Version 2 (int8 groups with one f32 scale per group) is refused: its blocks are not a GGML type.

The file is presented as a GGUF-like ``ModelFile``: GGUF tensor names, shapes in GGUF order (row
length first: PyTorch's ``(out, in)`` becomes ``(in, out)``), qtype F32, absolute offsets into the
mapping. No copies. llama2.c applies rope to consecutive pairs inside each head, which is what GGUF
``llama`` (rope type "norm") does, so wq/wk need no permutation. The header holds no epsilon or
rope base; ``run.c`` hard-codes 1e-5 and 10000, so those go into the metadata.

Nothing in the header is trusted: every int must be positive, heads must divide, and the file size
implied by the header is computed with Python ints and must equal the real size (RELIABILITY.md
row 24). The tokenizer is checked token by token (row 25).
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError
from ..paths import check_regular
from ..quant import GGMLType
from .model_file import ByteReader, ModelFile, TensorInfo, close_quietly, map_file, parse_mapped

LLAMA2C_MAGIC = struct.pack("<I", 0x616B3432)  # b"24ka" on disk
LEGACY_HEADER_BYTES = 7 * 4
V1_HEADER_BYTES = 256
RMS_EPS = 1e-5  # run.c's rmsnorm
ROPE_BASE = 10000.0  # run.c's rope
HPARAMS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")

# token types, as in GGUF's tokenizer.ggml.token_type
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>\Z")


def read_llama2c(path: Path, tokenizer_path: str | Path | None = None) -> ModelFile:
    """Read a llama2.c checkpoint plus its tokenizer.bin (default: beside the model)."""
    return attach_tokenizer(read_checkpoint(path), tokenizer_path)


def read_checkpoint(path: Path) -> ModelFile:
    """The weights and hyperparameters alone (no tokenizer.* metadata)."""
    return parse_mapped(path, _read_model)


def attach_tokenizer(model: ModelFile, tokenizer_path: str | Path | None) -> ModelFile:
    tok = Path(tokenizer_path) if tokenizer_path is not None else model.path.parent / "tokenizer.bin"
    try:
        md, ty = read_tokenizer_bin(tok, model.metadata["llama.vocab_size"])
    except BaseException:
        model.close()
        raise
    model.metadata.update(md)
    model.metadata_types.update(ty)
    return model


def _read_model(r: ByteReader, mm: Any) -> ModelFile:
    version = 0
    if r.size >= 8 and r.buf[:4] == LLAMA2C_MAGIC:
        r.pos = 4
        version = r.i32("version")
        if version == 2:
            r.fail("llama2.c version 2 (int8 Q8_0-style groups) is not supported: "
                   "export with --version 1, or convert the model to GGUF")
        if version != 1:
            r.fail(f"unsupported llama2.c version {version} (supported: legacy and 1)")
    if r.size < r.pos + LEGACY_HEADER_BYTES:
        r.fail(f"file too small ({r.size} bytes) for a llama2.c header")
    hp = dict(zip(HPARAMS, (r.i32(f"header field {name}") for name in HPARAMS)))
    shared = hp["vocab_size"] > 0
    if version == 1:
        flag = r.u8("shared_classifier flag")
        if flag > 1 or hp["vocab_size"] <= 0:
            r.fail(f"bad v1 header: shared_classifier={flag}, vocab_size={hp['vocab_size']}")
        shared = flag == 1
    hp["vocab_size"] = abs(hp["vocab_size"])  # Python int: INT_MIN becomes 2^31, no overflow
    _check_hparams(r, hp)

    data_start = V1_HEADER_BYTES if version == 1 else LEGACY_HEADER_BYTES
    expected = data_start + 4 * _n_floats(hp, shared, version)
    if expected != r.size:
        r.fail(
            f"file size {r.size} does not match the {expected} bytes implied by the header "
            f"({_fmt(hp)}, shared_classifier={shared}): truncated, padded or not a llama2.c file"
        )
    tensors: dict[str, TensorInfo] = {}
    offset = data_start
    for name, shape, n in _layout(hp, shared, version):  # n_layers is bounded by the size now
        if name is not None:  # rope tables are recomputed, not exposed
            tensors[name] = TensorInfo(name, GGMLType.F32, shape, offset, 4 * n)
        offset += 4 * n
    md, ty = _hparam_metadata(hp)
    return ModelFile(r.path, "llama2c", version, md, tensors, mm, ty)


def _fmt(hp: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in hp.items())


def _check_hparams(r: ByteReader, hp: dict[str, int]) -> None:
    bad = [k for k, v in hp.items() if v <= 0]
    if bad:
        r.fail(f"header fields {bad} must be positive ({_fmt(hp)})")
    if hp["dim"] % hp["n_heads"] or hp["n_heads"] % hp["n_kv_heads"]:
        r.fail(f"dim must divide by n_heads and n_heads by n_kv_heads ({_fmt(hp)})")
    if (hp["dim"] // hp["n_heads"]) % 2:
        r.fail(f"head size {hp['dim'] // hp['n_heads']} is odd; rope needs pairs ({_fmt(hp)})")


def _n_floats(hp: dict[str, int], shared: bool, version: int) -> int:
    """How many f32 the header implies, by arithmetic (the tensor list is only built once this
    matches the file size, so a header claiming 2^31 layers costs nothing)."""
    dim, hidden, L, vocab = hp["dim"], hp["hidden_dim"], hp["n_layers"], hp["vocab_size"]
    kv_dim = dim * hp["n_kv_heads"] // hp["n_heads"]
    per_layer = 2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim
    rope = 0 if version == 1 else hp["seq_len"] * (dim // hp["n_heads"])  # real + imag halves
    return vocab * dim * (1 if shared else 2) + L * per_layer + dim + rope


def _layout(hp: dict[str, int], shared: bool, version: int) -> list[tuple[str | None, tuple, int]]:
    """(GGUF name or None, GGUF shape, element count) in file order."""
    dim, hidden, L, vocab = hp["dim"], hp["hidden_dim"], hp["n_layers"], hp["vocab_size"]
    kv_dim = dim * hp["n_kv_heads"] // hp["n_heads"]
    rope_half = hp["seq_len"] * (dim // hp["n_heads"]) // 2

    def per_layer(part: str, shape: tuple[int, ...]) -> list:
        return [(f"blk.{i}.{part}.weight", shape, math.prod(shape)) for i in range(L)]

    embd = [("token_embd.weight", (dim, vocab), dim * vocab)]
    norm = [("output_norm.weight", (dim,), dim)]
    attn_norm, ffn_norm = per_layer("attn_norm", (dim,)), per_layer("ffn_norm", (dim,))
    matrices = (
        per_layer("attn_q", (dim, dim)) + per_layer("attn_k", (dim, kv_dim))
        + per_layer("attn_v", (dim, kv_dim)) + per_layer("attn_output", (dim, dim))
    )
    ffn = per_layer("ffn_gate", (dim, hidden)) + per_layer("ffn_down", (hidden, dim))
    ffn += per_layer("ffn_up", (dim, hidden))
    wcls = [] if shared else [("output.weight", (dim, vocab), dim * vocab)]
    if version == 1:
        return attn_norm + ffn_norm + norm + embd + matrices + ffn + wcls
    rope = [(None, (rope_half,), rope_half)] * 2
    return embd + attn_norm + matrices + ffn_norm + ffn + norm + rope + wcls


def _hparam_metadata(hp: dict[str, int]) -> tuple[dict[str, Any], dict[str, str]]:
    u32 = {
        "llama.embedding_length": hp["dim"],
        "llama.feed_forward_length": hp["hidden_dim"],
        "llama.block_count": hp["n_layers"],
        "llama.attention.head_count": hp["n_heads"],
        "llama.attention.head_count_kv": hp["n_kv_heads"],
        "llama.context_length": hp["seq_len"],
        "llama.rope.dimension_count": hp["dim"] // hp["n_heads"],
        "llama.vocab_size": hp["vocab_size"],
    }
    md: dict[str, Any] = {"general.architecture": "llama", **u32}
    ty = {"general.architecture": "STRING", **{k: "UINT32" for k in u32}}
    md["llama.attention.layer_norm_rms_epsilon"] = RMS_EPS
    md["llama.rope.freq_base"] = ROPE_BASE
    ty["llama.attention.layer_norm_rms_epsilon"] = ty["llama.rope.freq_base"] = "FLOAT32"
    return md, ty


# -----------------------------------------------------------------------------
# vocabulary


def llama_vocab_metadata(
    tokens: list[str], scores: list[float], types: list[int]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The tokenizer.ggml.* keys a GGUF converter writes for a SentencePiece LLaMA vocab."""
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }
    ty = {
        "tokenizer.ggml.model": "STRING",
        "tokenizer.ggml.tokens": "ARRAY[STRING]",
        "tokenizer.ggml.scores": "ARRAY[FLOAT32]",
        "tokenizer.ggml.token_type": "ARRAY[INT32]",
        "tokenizer.ggml.bos_token_id": "UINT32",
        "tokenizer.ggml.eos_token_id": "UINT32",
        "tokenizer.ggml.unknown_token_id": "UINT32",
        "tokenizer.ggml.add_bos_token": "BOOL",
    }
    return md, ty


def token_type(token_id: int, piece: str) -> int:
    if token_id == 0:
        return UNKNOWN
    if token_id in (1, 2):
        return CONTROL
    return BYTE if _BYTE_PIECE.match(piece) else NORMAL


def read_tokenizer_bin(path: Path, vocab_size: int) -> tuple[dict[str, Any], dict[str, str]]:
    """llama2.c's tokenizer.bin: int32 max_token_length, then per token f32 score, int32 len, bytes.

    Its exporter wrote SentencePiece pieces with '▁' turned into spaces and BOS/EOS as "\\n<s>\\n" /
    "\\n</s>\\n"; both are undone here so the pieces are SentencePiece pieces again."""
    if not path.exists():
        raise ModelFormatError(
            f"{path}: tokenizer.bin not found (llama2.c checkpoints need one; pass tokenizer_path)"
        )
    check_regular(path)  # a FIFO or a folder is named as such, never opened
    mm, size = map_file(path)
    try:
        r = ByteReader(path, mm, size)
        max_len = r.i32("max_token_length")
        if max_len <= 0:
            r.fail(f"max_token_length = {max_len} (must be positive)")
        if vocab_size * 9 > r.remaining:  # each token takes at least 9 bytes
            r.fail(f"{r.remaining} bytes cannot hold vocab_size={vocab_size} tokens")
        tokens, scores, types = [], [], []
        for i in range(vocab_size):
            score = r.f32(f"score of token {i}")
            n = r.i32(f"length of token {i}")
            if not 1 <= n <= max_len:
                r.fail(f"token {i} length = {n} (must be 1..max_token_length={max_len})")
            if not math.isfinite(score):
                r.fail(f"token {i} score = {score} (must be finite)")
            raw = r.take(n, f"token {i}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                r.fail(f"token {i} is not valid UTF-8: {raw[:40]!r}")
            if i in (1, 2) and text.strip("\n") in ("<s>", "</s>"):
                text = text.strip("\n")
            piece = text.replace(" ", "\u2581")
            tokens.append(piece)
            scores.append(score)
            types.append(token_type(i, piece))
        if r.remaining:
            r.fail(f"{r.remaining} bytes follow the {vocab_size} tokens the model expects "
                   "(tokenizer does not match the model's vocab_size)")
    finally:
        close_quietly(mm)
    return llama_vocab_metadata(tokens, scores, types)
