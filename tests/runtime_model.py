"""A small model shared by the runtime tests: the default SmolLM2 cut to its first 2 layers and
stored as F16 (derived once per test run with tools/requantize), loaded on the cpu backend once
per process. Real tokenizer, real template, real weights; ~15x faster than all 30 layers."""

from __future__ import annotations

import pytest

_cache: dict = {}


def small_model(tmp_path_factory: pytest.TempPathFactory):
    if "model" not in _cache:
        from perro_pastor.model import load
        from perro_pastor.paths import default_model_path
        from perro_pastor.tools.requantize import requantize
        path = tmp_path_factory.getbasetemp() / "smollm2-2layers-f16.gguf"
        if not path.exists():
            requantize(default_model_path(), path, "F16", n_layers=2)
        _cache["model"] = load(path, backend="cpu")
    return _cache["model"]
