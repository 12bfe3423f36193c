"""What every reader produces (``ModelFile``, ``TensorInfo``) and the checked byte cursor they
share (``ByteReader``): a truncated or lying file ends in one ModelFormatError naming the field."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..errors import ModelFormatError
from ..quant import GGMLType


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: GGMLType
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length (contiguous axis)
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class ModelFile:
    path: Path
    format: str  # "gguf" | "llama2c" | "ggml"
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    _mmap: mmap.mmap | None = field(default=None, repr=False)
    # The GGUF value type each metadata key was stored as: "UINT32", "FLOAT32", "STRING", "BOOL",
    # ..., and "ARRAY[FLOAT32]" for arrays, so later code can refuse e.g. scores stored as u8.
    # Readers of other formats fill it with the types a GGUF converter would have written.
    metadata_types: dict[str, str] = field(default_factory=dict)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of one tensor as a read-only uint8 view of the mapped file (no copy)."""
        info = self.tensors[name]
        return np.frombuffer(self._mmap, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def release_pages(self, name: str, first: int = 0, end: int | None = None) -> None:
        """Give a tensor's mapped pages back to the OS (it was only needed to prepare a copy),
        so the process never holds the whole file; reading it again faults the pages back in.
        ``first``, ``end``: only the whole pages within these bytes of the tensor."""
        mm, info = self._mmap, self.tensors[name]
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        end = info.nbytes if end is None else min(end, info.nbytes)
        start = -(-(info.offset + first) // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = (info.offset + end) // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start:
            try:
                mm.madvise(mmap.MADV_DONTNEED, start, stop - start)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:  # numpy views still alive; the GC closes it later
                pass
            self._mmap = None


# -----------------------------------------------------------------------------
# helpers shared by the readers


def map_file(path: Path) -> tuple[mmap.mmap, int]:
    """Map a whole file read-only. Empty files cannot be mapped, so they are refused here."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise ModelFormatError(f"{path}: file too small (0 bytes)")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot open model file: {e.strerror or e}") from None


def parse_mapped(path: Path, parse) -> ModelFile:
    """Map ``path`` and run ``parse(ByteReader, mmap)``; on any failure the mapping is closed,
    on success it belongs to the returned ModelFile (tensor bytes stay in it)."""
    mm, size = map_file(path)
    try:
        return parse(ByteReader(path, mm, size), mm)
    except BaseException:
        close_quietly(mm)
        raise


def close_quietly(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # a view is still alive (e.g. in a traceback); the GC closes it later
        pass


class ByteReader:
    """A cursor over the mapped file. Every read first checks that the bytes exist, so a
    truncated or lying file ends in one ModelFormatError naming the field and the offset."""

    def __init__(self, path: Path, buf: Any, size: int, pos: int = 0) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, size, pos

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def fail(self, msg: str) -> NoReturn:
        raise ModelFormatError(f"{self.path}: {msg}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            self.fail(
                f"{what} needs {n} bytes at offset {self.pos} but the file has only "
                f"{self.size - self.pos} left (file size {self.size}): truncated or corrupt"
            )

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str, n: int, what: str) -> Any:
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u8(self, what: str) -> int:
        return self.unpack("<B", 1, what)

    def i32(self, what: str) -> int:
        return self.unpack("<i", 4, what)

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def f32(self, what: str) -> float:
        return self.unpack("<f", 4, what)
