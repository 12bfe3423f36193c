"""GGUF v2/v3 reader: memory-mapped, and nothing in the file is trusted until it has been checked.

Why not the ``gguf`` package's ``GGUFReader``? It is the writer and quantization oracle in our
tests, but it is not a trust boundary. Version 0.19.0:

- hangs and eats memory on a 60-byte file whose array claims 2^62 elements (it builds the array
  before noticing the file is too short);
- silently truncates a string whose length runs past the end of the file;
- accepts misaligned and overlapping tensor offsets.

This reader bounds every count by the bytes that remain *before* it allocates or loops, never
recurses (an ARRAY of ARRAY is refused), computes sizes with Python ints, and checks every tensor
against the data section. RELIABILITY.md rows 1-17 list the cases; each has a test in
tests/test_formats_gguf.py. Every error is one ``ModelFormatError`` whose message starts with the
file name.

Metadata values become plain Python values: ints as ``int``, floats as ``float``, strings as
``str``, bools as ``bool``, and every array as a ``list`` (numeric arrays are decoded with NumPy and
converted with ``tolist()``; the largest, a 150k-entry score table, costs a few ms).
``ModelFile.metadata_types`` keeps the stored GGUF type of each key (``"UINT32"``,
``"ARRAY[FLOAT32]"``, ...). Tensor offsets in the file are relative to the aligned start of the
data section; ``TensorInfo.offset`` is absolute.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from ..quant import TYPE_INFO, GGMLType, type_name
from .model_file import ByteReader, ModelFile, TensorInfo, parse_mapped

GGUF_MAGIC = b"GGUF"
GGUF_MAGIC_SWAPPED = b"FUGG"  # the magic written as a big-endian uint32
HEADER_BYTES = 24  # magic, version, n_tensors, n_kv
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 1 << 16  # no writer uses more than a page; 2^31 would be a hostile file
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64 including the terminating NUL
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_DIM = (1 << 63) - 1  # ggml stores dims and element counts as int64


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# struct format and NumPy dtype of each fixed-size type
_FIXED: dict[ValueType, tuple[str, str, int]] = {
    ValueType.UINT8: ("<B", "<u1", 1),
    ValueType.INT8: ("<b", "<i1", 1),
    ValueType.UINT16: ("<H", "<u2", 2),
    ValueType.INT16: ("<h", "<i2", 2),
    ValueType.UINT32: ("<I", "<u4", 4),
    ValueType.INT32: ("<i", "<i4", 4),
    ValueType.FLOAT32: ("<f", "<f4", 4),
    ValueType.UINT64: ("<Q", "<u8", 8),
    ValueType.INT64: ("<q", "<i8", 8),
    ValueType.FLOAT64: ("<d", "<f8", 8),
    ValueType.BOOL: ("<B", "<u1", 1),
}
_STRING_MIN_BYTES = 8  # the length prefix of an empty string
# The fewest bytes a key/value pair and a tensor info can take; n_kv and n_tensors are bounded by
# these before anything is allocated or looped over.
MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-byte key, type, 1-byte value
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, name, n_dims, one dim, type, offset


def read_gguf(path: Path) -> ModelFile:
    """Parse and validate a GGUF v2/v3 file; tensor bytes stay in the mapping."""
    return parse_mapped(path, _parse)


def _parse(r: ByteReader, mm: Any) -> ModelFile:
    if r.size < HEADER_BYTES:
        r.fail(f"file too small ({r.size} bytes): a GGUF header needs {HEADER_BYTES}")
    version = _read_header(r)
    n_tensors = r.u64("n_tensors")
    n_kv = r.u64("n_kv")
    least = n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES
    if least > r.remaining:
        r.fail(
            f"header claims n_tensors={n_tensors} and n_kv={n_kv}, which need at least {least} "
            f"bytes, but only {r.remaining} follow the header"
        )

    metadata: dict[str, Any] = {}
    types: dict[str, str] = {}
    for i in range(n_kv):
        key = _read_key(r, i)
        if key in metadata:
            r.fail(f"duplicate metadata key '{key}' (key #{i})")
        vtype = _value_type(r, r.u32(f"value type of key '{key}'"), f"key '{key}'")
        metadata[key], types[key] = _read_value(r, key, vtype)

    alignment = _alignment(r, metadata, types)
    tensors = _read_tensor_infos(r, n_tensors, alignment)
    return ModelFile(r.path, "gguf", version, metadata, tensors, mm, types)


def _read_header(r: ByteReader) -> int:
    magic = r.take(4, "magic")
    if magic == GGUF_MAGIC_SWAPPED:
        r.fail("magic is b'FUGG': a big-endian GGUF file; only little-endian files are supported")
    if magic != GGUF_MAGIC:
        r.fail(f"bad magic {magic!r}: expected b'GGUF'")
    version = r.u32("version")
    if version in (2, 3):
        return version
    if int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
        r.fail(
            f"version field reads 0x{version:08x}: a big-endian GGUF file; "
            "only little-endian files are supported"
        )
    if version == 1:
        r.fail("GGUF version 1 (32-bit counts) is not supported: re-convert the model to v3")
    r.fail(f"unsupported GGUF version {version} (expected 2 or 3)")


def _read_key(r: ByteReader, i: int) -> str:
    raw = _read_string_bytes(r, f"key #{i}")
    if not raw:
        r.fail(f"metadata key #{i} is empty")
    # Keys are lower_snake_case ASCII with dots by the spec; refusing anything else keeps odd
    # bytes out of every later message and dictionary.
    if not all(0x20 < b < 0x7F for b in raw):
        r.fail(f"metadata key #{i} is not printable ASCII: {raw[:80]!r}")
    return raw.decode("ascii")


def _value_type(r: ByteReader, code: int, where: str) -> ValueType:
    try:
        return ValueType(code)
    except ValueError:
        r.fail(f"{where} has unknown value type {code} (known: 0..12)")


def _read_string_bytes(r: ByteReader, what: str) -> bytes:
    n = r.u64(f"length of {what}")
    if n > r.remaining:
        r.fail(
            f"{what} claims {n} bytes but only {r.remaining} remain at offset {r.pos} "
            "(truncated or corrupt)"
        )
    return r.take(n, what)


def _decode(r: ByteReader, raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        r.fail(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start}): {raw[:40]!r}")


def _read_value(r: ByteReader, key: str, vtype: ValueType) -> tuple[Any, str]:
    if vtype == ValueType.STRING:
        return _decode(r, _read_string_bytes(r, f"value of '{key}'"), f"value of '{key}'"), "STRING"
    if vtype != ValueType.ARRAY:
        fmt, _, n = _FIXED[vtype]
        v = r.unpack(fmt, n, f"value of '{key}'")
        if vtype == ValueType.BOOL:
            if v > 1:
                r.fail(f"BOOL value of '{key}' is byte {v} (must be 0 or 1)")
            v = bool(v)
        return v, vtype.name

    etype = _value_type(r, r.u32(f"element type of array '{key}'"), f"array '{key}'")
    if etype == ValueType.ARRAY:
        r.fail(f"array '{key}' holds arrays: nested arrays are not supported")
    count = r.u64(f"element count of array '{key}'")
    least = count * (_STRING_MIN_BYTES if etype == ValueType.STRING else _FIXED[etype][2])
    if least > r.remaining:
        r.fail(
            f"array '{key}' claims {count} {etype.name} elements (at least {least} bytes) but "
            f"only {r.remaining} bytes remain"
        )
    tname = f"ARRAY[{etype.name}]"
    if etype == ValueType.STRING:
        return _read_string_array(r, key, count), tname
    _, dtype, n = _FIXED[etype]
    values = np.frombuffer(r.take(count * n, f"array '{key}'"), dtype=dtype)
    if etype == ValueType.BOOL:
        if count and values.max() > 1:
            r.fail(f"BOOL array '{key}' holds byte {int(values.max())} (must be 0 or 1)")
        values = values.astype(bool)
    return values.tolist(), tname


def _read_string_array(r: ByteReader, key: str, count: int) -> list[str]:
    """The vocab arrays hold ~10^5 strings, so this loop avoids per-item method calls."""
    buf, pos, size = r.buf, r.pos, r.size
    unpack_len = struct.Struct("<Q").unpack_from
    out: list[str] = []
    append = out.append
    for i in range(count):
        if pos + 8 > size:
            r.pos = pos
            r.fail(f"array '{key}' element {i}: length runs past end of file at offset {pos}")
        (n,) = unpack_len(buf, pos)
        pos += 8
        if n > size - pos:
            r.fail(
                f"array '{key}' element {i} claims {n} bytes but only {size - pos} remain at "
                f"offset {pos} (truncated or corrupt)"
            )
        raw = buf[pos : pos + n]
        pos += n
        try:
            append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            r.pos = pos
            _decode(r, raw, f"array '{key}' element {i}")
    r.pos = pos
    return out


def _alignment(r: ByteReader, metadata: dict[str, Any], types: dict[str, str]) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    a, t = metadata["general.alignment"], types["general.alignment"]
    if t != "UINT32":
        r.fail(f"general.alignment is stored as {t}; it must be UINT32")
    if a == 0 or a & (a - 1) or a > MAX_ALIGNMENT:
        r.fail(f"general.alignment = {a}: must be a power of two no larger than {MAX_ALIGNMENT}")
    return a


def _read_tensor_infos(r: ByteReader, n_tensors: int, alignment: int) -> dict[str, TensorInfo]:
    entries: list[tuple[str, GGMLType, tuple[int, ...], int, int]] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        raw = _read_string_bytes(r, f"tensor #{i} name")
        if not raw:
            r.fail(f"tensor #{i} has an empty name")
        if len(raw) > MAX_NAME_BYTES:
            r.fail(f"tensor #{i} name is {len(raw)} bytes (max {MAX_NAME_BYTES}): {raw[:80]!r}")
        name = _decode(r, raw, f"tensor #{i} name")
        if name in seen:
            r.fail(f"duplicate tensor name '{name}'")
        seen.add(name)

        n_dims = r.u32(f"n_dims of tensor '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            r.fail(f"tensor '{name}' has n_dims = {n_dims} (must be 1..{MAX_DIMS})")
        shape = tuple(r.u64(f"dim {d} of tensor '{name}'") for d in range(n_dims))
        for d, ne in enumerate(shape):
            if not 1 <= ne <= MAX_DIM:
                r.fail(f"tensor '{name}' dim {d} = {ne} (must be 1..2^63-1); shape {list(shape)}")
        n_elements = 1
        for ne in shape:
            n_elements *= ne
        if n_elements > MAX_DIM:
            r.fail(f"tensor '{name}' shape {list(shape)} has {n_elements} elements (> 2^63-1)")

        code = r.u32(f"type of tensor '{name}'")
        if code not in TYPE_INFO:
            r.fail(f"tensor '{name}': unsupported tensor type {code} ({type_name(code)})")
        qtype = GGMLType(code)
        info = TYPE_INFO[qtype]
        if shape[0] % info.block_size:
            r.fail(
                f"tensor '{name}' ({qtype.name}) row length {shape[0]} is not a multiple of the "
                f"block size {info.block_size}"
            )
        nbytes = n_elements // info.block_size * info.type_size

        rel = r.u64(f"offset of tensor '{name}'")
        if rel % alignment:
            r.fail(f"tensor '{name}' offset {rel} is not a multiple of the alignment {alignment}")
        entries.append((name, qtype, shape, rel, nbytes))

    data_start = -(-r.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    prev_end, prev_name = 0, ""
    for name, qtype, shape, rel, nbytes in entries:
        if rel < prev_end:
            r.fail(
                f"tensor '{name}' data at offset {rel} overlaps or precedes tensor '{prev_name}' "
                f"(which ends at {prev_end}); tensors must be stored in order without overlap"
            )
        start = data_start + rel
        end = start + nbytes
        if end > r.size:
            r.fail(
                f"tensor '{name}' data runs past end of file (needs bytes {start}..{end}, file "
                f"has {r.size}): truncated or corrupt"
            )
        tensors[name] = TensorInfo(name, qtype, shape, start, nbytes)
        prev_end, prev_name = rel + nbytes, name
    return tensors
