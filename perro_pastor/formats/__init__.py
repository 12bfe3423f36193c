"""Readers for model files. Each turns a file into one ``ModelFile``: GGUF-style metadata keys
(``llama.embedding_length``, ``tokenizer.ggml.tokens``, ...), a table of tensors with GGUF names,
and memory-mapped access to their raw bytes. Nothing is trusted until it has been checked.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelFormatError
from ..paths import check_regular
from . import ggml_legacy, gguf, llama2c
from .model_file import ModelFile, TensorInfo

__all__ = ["ModelFile", "TensorInfo", "open_model_file"]


def open_model_file(path: str | Path, tokenizer_path: str | Path | None = None) -> ModelFile:
    """Open any supported model file, choosing the reader by its first four bytes.

    GGUF and GGML/GGMF/GGJT and llama2.c v1+ files carry a magic. The original llama2.c checkpoint
    has none (it starts with ``dim``), so any other magic is tried as one; its exact-size check
    makes that safe, and if it fails too the error names the four bytes seen and why.
    ``tokenizer_path`` is only used by llama2.c checkpoints (default: ``tokenizer.bin`` beside)."""
    path = check_regular(Path(path))  # a FIFO would block the open below forever
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot open model file: {e.strerror or e}") from None
    if len(magic) < 4:
        raise ModelFormatError(f"{path}: file too small ({len(magic)} bytes) to be a model file")
    if magic in (gguf.GGUF_MAGIC, gguf.GGUF_MAGIC_SWAPPED):
        return gguf.read_gguf(path)
    if magic in ggml_legacy.MAGICS:
        return ggml_legacy.read_ggml(path)
    if magic == llama2c.LLAMA2C_MAGIC:
        return llama2c.read_llama2c(path, tokenizer_path)
    try:
        model = llama2c.read_checkpoint(path)
    except ModelFormatError as e:
        reason = str(e).removeprefix(f"{path}: ")
        raise ModelFormatError(
            f"{path}: unknown magic {magic!r} (0x{int.from_bytes(magic, 'little'):08x}): not GGUF, "
            f"GGML/GGMF/GGJT or llama2.c; read as a headerless llama2.c checkpoint: {reason}"
        ) from None
    return llama2c.attach_tokenizer(model, tokenizer_path)
