"""Readers for model files. Each turns a file into one ``ModelFile``: GGUF-style metadata keys
(``llama.embedding_length``, ``tokenizer.ggml.tokens``, ...), a table of tensors with GGUF names,
and memory-mapped access to their raw bytes. Nothing is trusted until it has been checked.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of one tensor as a read-only uint8 view of the mapped file (no copy)."""
        info = self.tensors[name]
        return np.frombuffer(self._mmap, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def close(self) -> None:
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:  # numpy views still alive; the GC closes it later
                pass
            self._mmap = None


def open_model_file(path: str | Path, tokenizer_path: str | Path | None = None) -> ModelFile:
    """Open any supported model file, choosing the reader by its magic bytes."""
    raise NotImplementedError  # filled in by the formats work
