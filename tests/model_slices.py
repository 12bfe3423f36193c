"""The default model cut to a few layers and requantized (tools/requantize.py), for tests that
need a real but small file. Cut once and kept between runs in the system's temp folder, keyed by
the source model and the tool's code, so it does not depend on pytest's cache plugin."""

import hashlib
import inspect
import tempfile
from pathlib import Path

from perro_pastor.paths import default_model_path
from perro_pastor.tools import requantize as requantize_mod


def model_slice(qtype: str, n_layers: int) -> Path:
    src = default_model_path()
    code = hashlib.sha256(inspect.getsource(requantize_mod).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"perro_pastor_slices_{src.stat().st_size}_{code}"
    folder.mkdir(exist_ok=True)
    path = folder / f"{qtype}-{n_layers}.gguf"
    if not path.exists():
        tmp = folder / f"{qtype}-{n_layers}.{id(folder)}.part"  # a run's own temp name
        requantize_mod.requantize(src, tmp, qtype, n_layers)
        tmp.replace(path)
    return path
