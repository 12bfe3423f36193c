"""One exception type per area, so callers (and the CLI) can catch exactly what went wrong.

Every message names the file, the field and the offending values; the CLI prints it as one line.
"""


class PerroPastorError(Exception):
    """Base class for every error this package raises on purpose."""


class ModelFormatError(PerroPastorError):
    """A model, vocab or adapter file is malformed, truncated, hostile or unsupported."""


class TokenizerError(PerroPastorError):
    """A vocabulary cannot be turned into a working tokenizer (bad arrays, unknown pre-tokenizer)."""


class BackendError(PerroPastorError):
    """A compute backend cannot run here (no GL 4.3, limits too small, driver error)."""


class DownloadError(PerroPastorError):
    """A download failed or could not be verified; nothing was placed in the model folder."""
