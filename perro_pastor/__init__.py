"""perro_pastor: quantized Llama-family models on the GPU through OpenGL 4.3 compute shaders,
inside a game's own GL context.

    import perro_pastor
    model = perro_pastor.load("default")
    for token in model.generate("Once upon a time", max_tokens=32):
        print(token.text, end="", flush=True)
"""

from .errors import BackendError, DownloadError, ModelFormatError, PerroPastorError, TokenizerError

__version__ = "0.1.0"

_LAZY = {  # imported on first use, so `import perro_pastor.errors` stays light
    "load": "model", "Model": "model", "Token": "model", "GenerationStats": "model",
    "load_async": "loading", "LoadTask": "loading",
    "Sampler": "sampling", "SamplerSettings": "sampling", "GREEDY": "sampling",
}

__all__ = ["BackendError", "DownloadError", "ModelFormatError", "PerroPastorError", "TokenizerError",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'perro_pastor' has no attribute {name!r}")
