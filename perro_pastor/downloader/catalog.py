"""Short model names -> files on the Hugging Face Hub.

A catalog entry names where each file lives (repo, file, revision), how big it is when we know, and
what licence the user accepts by downloading it. It holds *no* SHA-256: the expected hash always
comes from the Hub at download time (the LFS sha256 in the tree API), so the catalog cannot go
stale on a re-upload and cannot be used to smuggle a wrong hash.

Sizes are the published byte counts where we could confirm them and None elsewhere; they are only
used for the listing and a disk-space hint, never for verification.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DownloadError
from .model_folder import check_repo_id, check_revision, safe_filename

DEFAULT_NAME = "default"


@dataclass(frozen=True)
class CatalogFile:
    repo: str
    filename: str
    revision: str = "main"
    size: int | None = None


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    licence: str
    files: tuple[CatalogFile, ...]

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)


def _gguf(name: str, repo: str, filename: str, description: str, licence: str,
          size: int | None = None) -> CatalogEntry:
    return CatalogEntry(name, description, licence, (CatalogFile(repo, filename, "main", size),))


# llama2.c's tokenizer.bin (Llama 2 SentencePiece vocab, 32000 pieces) serves every stories model.
_LLAMA2C_TOKENIZER = CatalogFile("karpathy/tinyllamas", "tokenizer.bin")


def _stories(n: str, size: int | None) -> CatalogEntry:
    return CatalogEntry(
        f"stories{n}", f"karpathy's TinyStories {n} (llama2.c .bin + tokenizer.bin), PerroPastor's sample",
        "MIT",
        (CatalogFile("karpathy/tinyllamas", f"stories{n}.bin", "main", size), _LLAMA2C_TOKENIZER),
    )


_LLAMA2 = "Llama 2 Community License (accept it at meta-llama/Llama-2-7b-chat-hf)"
_LLAMA32 = "Llama 3.2 Community License"

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in [
    _gguf("smollm2-135m", "bartowski/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct-Q4_K_M.gguf",
          "SmolLM2 135M Instruct, Q4_K_M", "Apache-2.0", 105_454_432),
    _gguf("smollm2-360m", "bartowski/SmolLM2-360M-Instruct-GGUF", "SmolLM2-360M-Instruct-Q4_K_M.gguf",
          "SmolLM2 360M Instruct, Q4_K_M", "Apache-2.0"),
    _gguf("smollm2-1.7b", "bartowski/SmolLM2-1.7B-Instruct-GGUF", "SmolLM2-1.7B-Instruct-Q4_K_M.gguf",
          "SmolLM2 1.7B Instruct, Q4_K_M", "Apache-2.0"),
    _gguf("tinyllama-1.1b-chat", "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
          "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", "TinyLlama 1.1B Chat v1.0, Q4_K_M", "Apache-2.0"),
    # 4 * (32000*288 + 6*995904 + 288 + 2*256*24) + 28 header bytes, from the llama2.c export layout.
    _stories("15M", 60_816_028),
    _stories("42M", None),
    _stories("110M", None),
    _gguf("llama2-7b-chat-q4_0", "TheBloke/Llama-2-7B-Chat-GGUF", "llama-2-7b-chat.Q4_0.gguf",
          "Llama 2 7B Chat, Q4_0", _LLAMA2),
    # TheBloke's GGUF repo has no Q5_1; the GGJT v3 file (read by formats/ggml) is the Q5_1 build.
    _gguf("llama2-7b-chat-q5_1", "TheBloke/Llama-2-7B-Chat-GGML", "llama-2-7b-chat.ggmlv3.q5_1.bin",
          "Llama 2 7B Chat, Q5_1 (legacy GGJT v3 file)", _LLAMA2),
    _gguf("open-llama-3b-v2", "SlyEcho/open_llama_3b_v2_gguf", "open-llama-3b-v2-q4_K_M.gguf",
          "OpenLLaMA 3B v2, Q4_K_M", "Apache-2.0"),
    _gguf("llama3.2-1b-instruct", "bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
          "Llama 3.2 1B Instruct, Q4_K_M", _LLAMA32, 807_694_464),
    _gguf("mistral-7b-instruct", "TheBloke/Mistral-7B-Instruct-v0.2-GGUF", "mistral-7b-instruct-v0.2.Q4_K_M.gguf",
          "Mistral 7B Instruct v0.2, Q4_K_M", "Apache-2.0"),
]}


def resolve_spec(spec: str, revision: str | None = None) -> tuple[str, list[CatalogFile]]:
    """A catalog name or ``owner/repo/path/in/repo`` -> (display name, files to fetch).

    ``--revision`` overrides the catalog's revision for every file. All names are validated here,
    before any network or disk access."""
    if spec in CATALOG:
        entry = CATALOG[spec]
        files = [CatalogFile(f.repo, f.filename, revision or f.revision, f.size) for f in entry.files]
    else:
        parts = spec.split("/", 2)
        if len(parts) < 3 or not parts[2]:
            known = ", ".join(sorted(CATALOG))
            raise DownloadError(f"unknown model {spec!r}: use a catalog name ({known}) or OWNER/REPO/FILE")
        files = [CatalogFile(f"{parts[0]}/{parts[1]}", parts[2], revision or "main")]
    for f in files:
        check_repo_id(f.repo)
        check_revision(f.revision)
        safe_filename(f.filename)
    return spec, files
