"""perro_pastor: quantized Llama-family models on the GPU through OpenGL 4.3 compute shaders,
inside a game's own GL context."""

from .errors import BackendError, DownloadError, ModelFormatError, PerroPastorError, TokenizerError

from .model import GenerationStats, Model, Token, load
from .sampling import GREEDY, Sampler, SamplerSettings

__version__ = "0.1.0"

__all__ = [
    "BackendError", "DownloadError", "ModelFormatError", "PerroPastorError", "TokenizerError",
    "GREEDY", "GenerationStats", "Model", "Sampler", "SamplerSettings", "Token", "load",
]
