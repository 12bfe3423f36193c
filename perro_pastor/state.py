"""Save, restore and fork an NPC: its KV cache, history, position and sampler RNG as bytes.

Layout (little-endian):

    magic  b"PPNPC\\0"     6 bytes
    version u16            FORMAT_VERSION
    model_hash  32 bytes   sha256 of the model's metadata + tensor table (see model_hash)
    adapter_hash 32 bytes  sha256 identifying the LoRA adapter, zeros for none
    checksum 32 bytes      sha256 of the whole save with these 32 bytes zeroed (version 2 on)
    json_len u32, json     session fields: history, tokens, n_past, settings, RNG state, ...
    kv                     n_past rows of keys then values, as f32, f16 or q8

q8 stores each (layer, position, head) row of head_size values as int8 with one f16 scale
(absmax / 127): about half of f16. A restored session only prefills what is new, so its first
token comes far sooner than re-prefilling the whole history would.

A save is untrusted input (a player edits it, a disk flips a bit). Restoring checks everything
before touching a session: a wrong magic, version, model, adapter or checksum is refused with
``StateError`` naming what differs, and then every field is type-checked and bounded
(``check_fields``, with the model's ``Limits``): the history is at most ``MAX_MESSAGES``
messages and ``MAX_TEXT_CHARS`` characters with the system prompt, tokens are ids of the model's
vocabulary, the KV rows are finite f16-range numbers. Nothing else than ``StateError`` escapes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np

from .errors import PerroPastorError

MAGIC = b"PPNPC\0"
FORMAT_VERSION = 2  # 1: no checksum (refused: a flipped bit went unnoticed)
KV_DTYPES = ("f32", "f16", "q8")
_HEADER = struct.Struct("<6sH32s32s32sI")
_CHECKSUM = slice(6 + 2 + 32 + 32, 6 + 2 + 32 + 32 + 32)  # where the checksum sits in the header
MAX_MESSAGES = 256  # history length a save may hold
MAX_TEXT_CHARS = 128 * 1024  # system prompt + every message's content
MAX_JSON_BYTES = 4 * MAX_TEXT_CHARS + (1 << 20)  # the fields, escapes and tokens included
MAX_KV_ABS = 65504.0  # the f16 range: larger keys or values are not a real model's
FIELDS = ("name", "system_prompt", "priority", "n_ctx", "context_policy", "template", "messages",
          "tokens", "n_past", "settings", "seed", "rng", "kv_dtype", "kv_shape")


class StateError(PerroPastorError):
    """Saved NPC bytes are corrupt, from another version, or for another model or adapter."""


def model_hash(model) -> bytes:
    """sha256 over the metadata and the tensor table (names, types, shapes, offsets): it changes
    when the weights file does, and costs microseconds, not a read of the whole file."""
    h = hashlib.sha256()
    mf = model.file
    for key in sorted(mf.metadata):
        value = mf.metadata[key]
        if isinstance(value, np.ndarray):
            value = value.tolist()
        h.update(repr((key, value)).encode("utf-8", "surrogatepass"))
    for name in sorted(mf.tensors):
        t = mf.tensors[name]
        h.update(repr((t.name, int(t.qtype), tuple(t.shape), t.offset, t.nbytes)).encode())
    return h.digest()


def adapter_hash(lora) -> bytes:
    """32 zero bytes for no adapter; else its ``sha256`` attribute (bytes or hex), or a hash of its repr."""
    if lora is None or (isinstance(lora, (list, tuple)) and not lora):
        return bytes(32)
    if isinstance(lora, (list, tuple)):  # several adapters: order matters
        return hashlib.sha256(b"".join(adapter_hash(a) for a in lora)).digest()
    digest = getattr(lora, "sha256", None)
    if isinstance(digest, bytes) and len(digest) == 32:
        return digest
    if isinstance(digest, str):
        return bytes.fromhex(digest)
    return hashlib.sha256(repr(lora).encode()).digest()


# -----------------------------------------------------------------------------
# KV encoding

def encode_kv(kv: np.ndarray, dtype: str) -> bytes:
    if dtype == "f32":
        return kv.astype("<f4").tobytes()
    if dtype == "f16":
        return kv.astype("<f2").tobytes()
    scale = np.abs(kv).max(axis=-1, keepdims=True) / 127.0
    scale = scale.astype("<f2")
    safe = np.where(scale == 0, 1, scale.astype(np.float32))
    q = np.clip(np.rint(kv / safe), -127, 127).astype(np.int8)
    return scale.tobytes() + q.tobytes()


def decode_kv(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    if dtype in ("f32", "f16"):
        item = 4 if dtype == "f32" else 2
        if len(data) != n * item:
            raise StateError(f"KV section has {len(data)} bytes, expected {n * item} for {shape} {dtype}")
        return np.frombuffer(data, "<f4" if dtype == "f32" else "<f2").reshape(shape).astype(np.float32)
    n_rows = n // shape[-1]
    if len(data) != n_rows * 2 + n:
        raise StateError(f"KV section has {len(data)} bytes, expected {n_rows * 2 + n} for {shape} q8")
    scale = np.frombuffer(data[:n_rows * 2], "<f2").reshape(*shape[:-1], 1).astype(np.float32)
    q = np.frombuffer(data[n_rows * 2:], np.int8).reshape(shape)
    return q.astype(np.float32) * scale


# -----------------------------------------------------------------------------
# packing and unpacking (plain data: the session and the scheduler build on it)

@dataclass(frozen=True)
class Limits:
    """What a save must fit on this model: its vocabulary, context and KV row layout."""
    n_vocab: int
    seq_len: int
    kv_shape: tuple[int, int, int, int]  # export_kv's (2, n_layers, n_kv_heads, head_size), rows aside


def limits_for(model) -> Limits:
    cfg = model.config
    return Limits(len(model.tokenizer.tokens), cfg.seq_len, (2, cfg.n_layers, cfg.n_kv_heads, cfg.head_size))


def _is_int(x, lo: int, hi: int) -> bool:
    return type(x) is int and lo <= x <= hi


def check_fields(fields, limits: Limits) -> str | None:
    """What is wrong with saved fields (the first thing found, naming the field), or None."""
    if not isinstance(fields, dict) or sorted(fields) != sorted(FIELDS):
        return f"fields must be exactly {', '.join(FIELDS)}"
    f = fields
    for key, limit in (("name", 256), ("context_policy", 32), ("template", 64), ("kv_dtype", 8)):
        if not isinstance(f[key], str) or len(f[key]) > limit:
            return f"{key} must be a string of at most {limit} chars"
    if f["system_prompt"] is not None and not isinstance(f["system_prompt"], str):
        return "system_prompt must be a string or null"
    if not _is_int(f["priority"], -2**31, 2**31):
        return f"priority must be an int in -2**31..2**31, got {f['priority']!r:.40}"
    if not _is_int(f["n_ctx"], 2, limits.seq_len):
        return f"n_ctx must be an int in 2..{limits.seq_len}, got {f['n_ctx']!r:.40}"
    if not _is_int(f["n_past"], 0, f["n_ctx"]):
        return f"n_past must be an int in 0..n_ctx={f['n_ctx']}, got {f['n_past']!r:.40}"
    messages = f["messages"]
    if not isinstance(messages, list) or len(messages) > MAX_MESSAGES:
        return f"messages must be a list of at most {MAX_MESSAGES}"
    chars = len(f["system_prompt"] or "")
    for m in messages:
        if not isinstance(m, dict) or sorted(m) != ["content", "role"] \
                or not all(isinstance(v, str) for v in m.values()):
            return "messages must be {role, content} strings"
        chars += len(m["content"]) + len(m["role"])
    if chars > MAX_TEXT_CHARS:
        return f"system prompt and messages hold {chars} chars, over the {MAX_TEXT_CHARS} limit"
    tokens = f["tokens"]
    if not isinstance(tokens, list) or len(tokens) != f["n_past"] \
            or not all(_is_int(t, 0, limits.n_vocab - 1) for t in tokens):
        return f"tokens must be n_past={f['n_past']} ids in 0..{limits.n_vocab - 1}"
    if not isinstance(f["settings"], dict) or len(f["settings"]) > 16:
        return "settings must be a mapping of sampler settings"
    if f["seed"] is not None and not _is_int(f["seed"], 0, 2**128):
        return "seed must be null or an int in 0..2**128"
    rng = f["rng"]
    words = rng.get("state") if isinstance(rng, dict) else None
    if not isinstance(words, dict) or rng.get("bit_generator") != "PCG64" or sorted(words) != ["inc", "state"] \
            or not all(_is_int(v, 0, 2**128 - 1) for v in words.values()) \
            or not _is_int(rng.get("has_uint32"), 0, 1) or not _is_int(rng.get("uinteger"), 0, 2**32 - 1) \
            or sorted(rng) != ["bit_generator", "has_uint32", "state", "uinteger"]:
        return "rng must be a PCG64 state"
    if f["kv_dtype"] not in KV_DTYPES:
        return f"kv_dtype must be one of {', '.join(KV_DTYPES)}"
    s2, n_layers, n_kv_heads, head_size = limits.kv_shape
    if f["kv_shape"] != [s2, n_layers, f["n_past"], n_kv_heads, head_size]:
        return f"kv_shape must be [{s2}, {n_layers}, n_past={f['n_past']}, {n_kv_heads}, {head_size}]"
    return None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


@dataclass
class SavedSession:
    """What ``unpack`` checked and returns: the session's fields (history, tokens, options,
    sampler settings and RNG state) and its KV rows in ``export_kv`` layout (float32)."""
    fields: dict
    kv: np.ndarray

    @property
    def n_past(self) -> int:
        return int(self.fields["n_past"])


def pack(fields: dict, kv: np.ndarray, kv_dtype: str, model_digest: bytes, adapter_digest: bytes) -> bytes:
    """The bytes of a session: header, ``fields`` as JSON, then ``kv`` (``export_kv`` layout)."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype {kv_dtype!r}: choose from {', '.join(KV_DTYPES)}")
    blob = json.dumps({**fields, "kv_dtype": kv_dtype, "kv_shape": list(kv.shape)}).encode()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, model_digest, adapter_digest, bytes(32), len(blob))
    data = bytearray(header + blob + encode_kv(kv, kv_dtype))
    data[_CHECKSUM] = hashlib.sha256(data).digest()
    return bytes(data)


def unpack(data: bytes, model_digest: bytes, adapter_digest: bytes, model_name: str,
           where: str = "saved NPC", limits: Limits | None = None) -> SavedSession:
    """Check ``pack`` bytes against this model and adapter, and read them back. With ``limits``
    (``limits_for(model)``) every field is checked too (``check_fields``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StateError(f"{where}: a save is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8:
        raise StateError(f"{where}: {len(data)} bytes, too short for the {_HEADER.size}-byte header")
    if data[:6] == MAGIC and data[6:8] == (1).to_bytes(2, "little"):
        raise StateError(f"{where}: format version 1 (before checksums), this build reads version "
                         f"{FORMAT_VERSION} only: save the NPC again with this build")
    if len(data) < _HEADER.size:
        raise StateError(f"{where}: {len(data)} bytes, too short for the {_HEADER.size}-byte header")
    magic, version, m_hash, a_hash, checksum, n_json = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateError(f"{where}: magic {magic!r} is not {MAGIC!r}: not a perro_pastor NPC state")
    if version != FORMAT_VERSION:
        raise StateError(f"{where}: format version {version}, this build reads version {FORMAT_VERSION}")
    if hashlib.sha256(data[:_CHECKSUM.start] + bytes(32) + data[_CHECKSUM.stop:]).digest() != checksum:
        raise StateError(f"{where}: checksum mismatch: the save is corrupt or was edited")
    if n_json > MAX_JSON_BYTES or _HEADER.size + n_json > len(data):
        raise StateError(f"{where}: fields of {n_json} bytes, over the {MAX_JSON_BYTES} limit or past the end")
    if m_hash != model_digest:
        raise StateError(f"{where}: saved for model {m_hash.hex()[:16]}, this is model "
                         f"{model_digest.hex()[:16]} ({model_name})")
    if a_hash != adapter_digest:
        raise StateError(f"{where}: saved with adapter {a_hash.hex()[:16]}, "
                         f"given adapter {adapter_digest.hex()[:16]}")
    try:
        fields = json.loads(data[_HEADER.size:_HEADER.size + n_json], parse_constant=_no_constant)
        if limits is not None and (problem := check_fields(fields, limits)) is not None:
            raise StateError(f"{where}: corrupt session fields: {problem}")
        shape = tuple(int(d) for d in fields["kv_shape"])
        if len(shape) != 5 or min(shape) < 0:
            raise StateError(f"{where}: corrupt session fields: kv_shape {shape}")
        kv = decode_kv(data[_HEADER.size + n_json:], fields["kv_dtype"], shape)
        n_past = int(fields["n_past"])
        if shape[2] != n_past or len(fields["tokens"]) != n_past:
            raise StateError(f"{where}: KV holds {shape[2]} rows, tokens {len(fields['tokens'])}, n_past {n_past}")
        if not np.all(np.abs(kv) <= MAX_KV_ABS):  # (NaN fails the test too)
            raise StateError(f"{where}: corrupt session fields: KV values not finite or over {MAX_KV_ABS}")
    except StateError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError, MemoryError) as exc:
        raise StateError(f"{where}: corrupt session fields: {type(exc).__name__}: {exc}") from None
    return SavedSession(fields, kv)
