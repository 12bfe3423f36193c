"""SentencePiece vocabularies ("llama" in GGUF), run by the ``sentencepiece`` library.

A GGUF does not carry the original ``tokenizer.model``; it carries the pieces, their scores and
their types. llama.cpp's SPM tokenizer is a BPE over those pieces that merges the adjacent pair
whose joined piece has the highest score, falls back to ``<0xXX>`` byte pieces for anything it
cannot spell, and treats text as raw (no normalisation) with spaces written as U+2581. A
SentencePiece ``ModelProto`` of model type BPE with byte fallback and the identity normaliser
does the same, so we build one in memory.

The dummy-prefix space is *not* left to SentencePiece: llama.cpp adds it in front of every text
fragment that follows a special token (or starts the text), and ``tokenizer.Tokenizer`` does that.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from .errors import TokenizerError

# GGUF token types (tokenizer.ggml.token_type); SentencePiece uses the same numbers for 1..6.
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(7)

SPACE = "\u2581"  # how SentencePiece writes a space inside a piece


def build(tokens: list[str], scores: list[float], types: list[int], unk_id: int | None,
          where: str) -> spm.SentencePieceProcessor:
    """A SentencePieceProcessor whose ids are exactly the GGUF token ids."""
    proto = sp_pb2.ModelProto()
    proto.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = len(tokens)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False  # added per fragment by the caller
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True

    # SentencePiece wants exactly one unknown piece. Files may mark none (old conversions) or
    # many (Phi-3's padding pieces): keep the file's unknown id, or the first one marked, and
    # make any others control pieces, which SentencePiece never produces from text either.
    if unk_id is not None and types[unk_id] == UNKNOWN or UNKNOWN not in types:
        the_unk = unk_id
    else:
        the_unk = types.index(UNKNOWN)
    if the_unk is None:
        raise TokenizerError(f"{where}: SentencePiece vocabulary has no unknown token "
                             "(no token_type 2 and no tokenizer.ggml.unknown_token_id)")
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        p = proto.pieces.add()
        p.piece = piece
        p.score = score
        if i == the_unk:
            p.type = UNKNOWN
        elif kind == UNKNOWN:
            p.type = CONTROL
        elif kind in (NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE):
            p.type = kind
        else:  # UNDEFINED (0): llama.cpp treats the piece as text
            p.type = NORMAL
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto.SerializeToString())
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own text
        raise TokenizerError(f"{where}: vocabulary rejected by sentencepiece: {e}") from e
    return sp


def piece_to_bytes(piece: str, kind: int) -> bytes:
    """Text bytes of a normal or byte piece (``<0x0A>`` is the byte 10, U+2581 is a space)."""
    if kind == BYTE and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace(SPACE, " ").encode("utf-8")


def metadata_from_model_file(path: str | Path) -> dict[str, Any]:
    """GGUF-style tokenizer metadata from a SentencePiece ``tokenizer.model`` file."""
    try:
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(Path(path).read_bytes())
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read SentencePiece model: {e}") from e
    except Exception as e:  # protobuf DecodeError
        raise TokenizerError(f"{path}: not a SentencePiece model: {e}") from e
    if not proto.pieces:
        raise TokenizerError(f"{path}: SentencePiece model has no pieces")
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        kind = sp_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise TokenizerError(f"{path}: SentencePiece model_type {kind} is not supported (only BPE)")
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [p.piece for p in proto.pieces],
        "tokenizer.ggml.scores": [p.score if math.isfinite(p.score) else 0.0 for p in proto.pieces],
        "tokenizer.ggml.token_type": [int(p.type) for p in proto.pieces],
        "tokenizer.ggml.add_space_prefix": bool(proto.normalizer_spec.add_dummy_prefix),
    }
    spec = proto.trainer_spec
    for key, value in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unknown", spec.unk_id),
                       ("padding", spec.pad_id)):
        if value >= 0:
            meta[f"tokenizer.ggml.{key}_token_id"] = value
    return meta
