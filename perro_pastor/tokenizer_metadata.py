"""Reading the tokenizer's metadata (``tokenizer.ggml.*``) from an untrusted file: every error
names the file, the key and the values."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from .errors import TokenizerError
from .tokenizer_spm import NORMAL

K = "tokenizer.ggml."
MAX_VOCAB = 1 << 24  # far above any real vocabulary; a bigger array is corrupt or hostile


# -----------------------------------------------------------------------------
# validation: every error names the file, the key and the values

_INT_TYPES = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64"}
_NUMPY_NAMES = {"uint8": "UINT8", "int8": "INT8", "uint16": "UINT16", "int16": "INT16",
                "uint32": "UINT32", "int32": "INT32", "uint64": "UINT64", "int64": "INT64",
                "float32": "FLOAT32", "float64": "FLOAT64", "bool": "BOOL"}


def _type_name(t: Any) -> str:
    name = str(getattr(t, "name", t)).upper()
    if "[" in name:  # "ARRAY[FLOAT32]" -> "FLOAT32"
        name = name[name.index("[") + 1:].rstrip("]")
    return name.removeprefix("GGUFVALUETYPE.")


class MetadataValidator:
    """Typed reads of the tokenizer's GGUF keys; every refusal is one TokenizerError naming the
    file, the key and what was found."""

    def __init__(self, meta: Mapping[str, Any], where: str, types: Mapping[str, Any]):
        self.meta, self.where, self.types = meta, where, types

    def _fail(self, key: str, what: str) -> TokenizerError:
        return TokenizerError(f"{self.where}: {K}{key} {what}")

    def _check_type(self, key: str, allowed: set[str]) -> None:
        """Refuse a stored type not in ``allowed``: from ``metadata_types`` or a NumPy dtype."""
        if K + key in self.types:
            name = _type_name(self.types[K + key])
        else:
            dtype = getattr(self.meta[K + key], "dtype", None)
            if dtype is None:
                return
            name = _NUMPY_NAMES.get(str(dtype), str(dtype).upper())
        if name not in allowed:
            raise self._fail(key, f"is stored as {name}, expected {' or '.join(sorted(allowed))}")

    def _array(self, key: str, n: int | None) -> list:
        value = self.meta[K + key]
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()  # a NumPy array from the reader; its dtype was checked
        if not isinstance(value, (list, tuple)):
            raise self._fail(key, f"must be an array, got {type(value).__name__}")
        if n is not None and len(value) != n:
            raise self._fail(key, f"has {len(value)} entries but {K}tokens has {n}")
        return list(value)

    def string(self, key: str, default: str | None = None) -> str:
        if K + key not in self.meta:
            if default is None:
                raise self._fail(key, "is missing")
            return default
        self._check_type(key, {"STRING"})
        value = self.meta[K + key]
        if not isinstance(value, str):
            raise self._fail(key, f"must be a string, got {type(value).__name__} {value!r:.60}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        if K + key not in self.meta:
            return default
        self._check_type(key, {"BOOL"})
        value = self.meta[K + key]
        if not isinstance(value, bool):
            raise self._fail(key, f"must be a bool, got {type(value).__name__} {value!r:.60}")
        return value

    def tokens(self) -> list[str]:
        if K + "tokens" not in self.meta:
            raise self._fail("tokens", "is missing")
        self._check_type("tokens", {"STRING"})
        tokens = self._array("tokens", None)
        if not 0 < len(tokens) <= MAX_VOCAB:
            raise self._fail("tokens", f"has {len(tokens)} entries (expected 1..{MAX_VOCAB})")
        seen: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if not isinstance(t, str):
                raise self._fail("tokens", f"entry {i} must be a string, got {type(t).__name__}")
            if not t:
                t = tokens[i] = f"[EMPTY_{i}]"  # llama.cpp's stand-in for an empty token
            if t in seen:
                raise self._fail("tokens", f"has {t!r} twice (ids {seen[t]} and {i})")
            seen[t] = i
        return tokens

    def token_types(self, n: int) -> list[int]:
        if K + "token_type" not in self.meta:
            return [NORMAL] * n
        self._check_type("token_type", {"INT32"})
        types = self._array("token_type", n)
        for i, t in enumerate(types):
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 6:
                raise self._fail("token_type", f"entry {i} = {t!r} is not a token type (0..6)")
        return types

    def scores(self, n: int) -> list[float]:
        if K + "scores" not in self.meta:
            return [0.0] * n
        self._check_type("scores", {"FLOAT32", "INT32"})  # llama.cpp reads both
        scores = self._array("scores", n)
        for i, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise self._fail("scores", f"entry {i} = {s!r} is not a finite number")
        return [float(s) for s in scores]

    def merges(self) -> list[str]:
        if K + "merges" not in self.meta:
            raise self._fail("merges", "is missing (required for gpt2 vocabularies)")
        self._check_type("merges", {"STRING"})
        merges = self._array("merges", None)
        for i, m in enumerate(merges):
            if not isinstance(m, str):
                raise self._fail("merges", f"entry {i} must be a string, got {type(m).__name__}")
        return merges

    def token_id(self, key: str, default: int | None, n: int) -> int | None:
        if K + key in self.meta:
            self._check_type(key, _INT_TYPES)
            value, source = self.meta[K + key], ""
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise self._fail(key, f"must be an integer, got {type(value).__name__} {value!r:.60}")
            value = int(value)
        elif default is None:
            return None
        else:
            value, source = default, " (llama.cpp's default)"
        if not 0 <= value < n:
            raise self._fail(key, f"= {value}{source} is outside the vocabulary of {n} tokens")
        return value
