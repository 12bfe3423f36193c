"""Save, restore and fork an NPC: its KV cache, history, position and sampler RNG as bytes.

Layout (little-endian):

    magic  b"PPNPC\\0"     6 bytes
    version u16            FORMAT_VERSION
    model_hash  32 bytes   sha256 of the model's metadata + tensor table (see model_hash)
    adapter_hash 32 bytes  sha256 identifying the LoRA adapter, zeros for none
    json_len u32, json     session fields: history, tokens, n_past, settings, RNG state, ...
    kv                     n_past rows of keys then values, as f32, f16 or q8

q8 stores each (layer, position, head) row of head_size values as int8 with one f16 scale
(absmax / 127): about half of f16. A restored session only prefills what is new, so its first
token comes far sooner than re-prefilling the whole history would.

Restoring checks everything before touching the session: a wrong magic, version, model or
adapter is refused with ``StateError`` naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np

from .errors import PerroPastorError

MAGIC = b"PPNPC\0"
FORMAT_VERSION = 1
KV_DTYPES = ("f32", "f16", "q8")
_HEADER = struct.Struct("<6sH32s32sI")


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
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, model_digest, adapter_digest, len(blob))
    return header + blob + encode_kv(kv, kv_dtype)


def unpack(data: bytes, model_digest: bytes, adapter_digest: bytes, model_name: str,
           where: str = "saved NPC") -> SavedSession:
    """Check ``pack`` bytes against this model and adapter, and read them back."""
    if len(data) < _HEADER.size:
        raise StateError(f"{where}: {len(data)} bytes, too short for the {_HEADER.size}-byte header")
    magic, version, m_hash, a_hash, n_json = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateError(f"{where}: magic {magic!r} is not {MAGIC!r}: not a perro_pastor NPC state")
    if version != FORMAT_VERSION:
        raise StateError(f"{where}: format version {version}, this build reads version {FORMAT_VERSION}")
    if m_hash != model_digest:
        raise StateError(f"{where}: saved for model {m_hash.hex()[:16]}, this is model "
                         f"{model_digest.hex()[:16]} ({model_name})")
    if a_hash != adapter_digest:
        raise StateError(f"{where}: saved with adapter {a_hash.hex()[:16]}, "
                         f"given adapter {adapter_digest.hex()[:16]}")
    try:
        fields = json.loads(data[_HEADER.size:_HEADER.size + n_json])
        shape = tuple(int(d) for d in fields["kv_shape"])
        kv = decode_kv(data[_HEADER.size + n_json:], fields["kv_dtype"], shape)
        n_past = int(fields["n_past"])
        if shape[2] != n_past or len(fields["tokens"]) != n_past:
            raise StateError(f"{where}: KV holds {shape[2]} rows, tokens {len(fields['tokens'])}, n_past {n_past}")
    except StateError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise StateError(f"{where}: corrupt session fields: {type(exc).__name__}: {exc}") from None
    return SavedSession(fields, kv)
