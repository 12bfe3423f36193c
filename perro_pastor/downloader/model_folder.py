"""The model folder on disk: safe names, the files that sit beside a model, locks, listing.

Everything a download writes lives in one folder and is named from the remote file name, so the
name is the first untrusted input. `safe_filename` rejects anything that could leave the folder or
misbehave on some OS *before* a single byte touches disk (RELIABILITY.md row 35).

Beside a model file ``M`` the downloader keeps:

- ``M.part``          the bytes received so far (resumable after Ctrl-C, a crash or a full disk)
- ``M.part.json``     what the ``.part`` belongs to (repo, commit, expected sha256, size, CDN etag),
                      so a resume never splices bytes of two different upstream files
- ``M.lock``          an advisory lock held while one process works on ``M``
- ``M.download.json`` the verified state: sha256, size, mtime, where it came from. ``models`` reads
                      it to say "verified" without re-hashing gigabytes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DownloadError

PART = ".part"
PART_META = ".part.json"
LOCK = ".lock"
SIDECAR = ".download.json"
_AUX_SUFFIXES = (PART, PART_META, LOCK, SIDECAR)

# Device names Windows reserves in every folder, with or without an extension ("nul.gguf").
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in list("123456789") + ["¹", "²", "³"]
}
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


def safe_filename(name: str) -> str:
    """The base name a remote file is stored under, or `DownloadError` if it is unsafe anywhere.

    The Hub path may have folders (``sub/model.gguf``); each component is checked and the model is
    stored flat under its last component, which is what `perro_pastor.paths.resolve_model` looks up.
    """
    why = _unsafe_reason(name)
    if why:
        raise DownloadError(f"refusing file name {name!r}: {why}")
    return name.rsplit("/", 1)[-1]


def _unsafe_reason(name: str) -> str | None:
    if not name:
        return "empty"
    if len(name) > 255:
        return f"too long ({len(name)} characters)"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "control character"
    if "\\" in name:
        return "backslash (Windows path separator)"
    if name.startswith("/") or name.startswith("~"):
        return "absolute or home-relative path"
    if re.match(r"^[A-Za-z]:", name):
        return "drive letter"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"path component {part!r}"
        if part != part.rstrip(". "):
            return "component ends with a dot or space (Windows drops them)"
        if any(c in part for c in '<>:"|?*'):
            return "character not allowed in Windows file names"
        if part.split(".")[0].upper() in _WINDOWS_RESERVED:
            return f"reserved Windows device name {part.split('.')[0]!r}"
    base = name.rsplit("/", 1)[-1]
    if base.endswith(_AUX_SUFFIXES):
        return "name collides with the downloader's own files"
    return None


def check_repo_id(repo: str) -> str:
    """`owner/name` as the Hub spells it; anything else is rejected before it reaches a URL."""
    parts = repo.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts) or ".." in repo:
        raise DownloadError(f"bad repository id {repo!r}: expected owner/name of letters, digits, . _ -")
    return repo


def check_revision(revision: str) -> str:
    """A branch, tag or commit; refs like ``refs/pr/1`` are allowed, ``..`` is not."""
    if not _REVISION.match(revision) or ".." in revision or revision.startswith("/"):
        raise DownloadError(f"bad revision {revision!r}: expected a branch, tag or commit hash")
    return revision


@dataclass(frozen=True)
class Slot:
    """The set of paths that belong to one model file in one folder."""

    folder: Path
    name: str

    @property
    def final(self) -> Path:
        return self.folder / self.name

    @property
    def part(self) -> Path:
        return self.folder / (self.name + PART)

    @property
    def part_meta(self) -> Path:
        return self.folder / (self.name + PART_META)

    @property
    def lock(self) -> Path:
        return self.folder / (self.name + LOCK)

    @property
    def sidecar(self) -> Path:
        return self.folder / (self.name + SIDECAR)

    def check_no_symlinks(self) -> None:
        """A symlink planted in the folder could redirect our writes elsewhere (row 35)."""
        for p in (self.final, self.part, self.part_meta, self.lock, self.sidecar):
            if p.is_symlink():
                raise DownloadError(f"refusing to write through symlink {p}")


def prepare_folder(folder: Path) -> Path:
    """Create the model folder (and parents); a clear error if that is impossible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create model folder {folder}: {e.strerror or e}") from e
    if not folder.is_dir():
        raise DownloadError(f"model folder {folder} exists but is not a folder")
    return folder


# -----------------------------------------------------------------------------
# JSON sidecars (written atomically so a crash never leaves half a file)

def write_json(path: Path, data: dict) -> None:
    """Write ``path`` by a rename from a fresh temp file in the same folder. The temp name is
    random and created with O_EXCL (``mkstemp``), so a symlink planted at a predictable name can
    never redirect the write outside the folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


MAX_JSON_BYTES = 1 << 20  # a sidecar is a few hundred bytes; anything huge is not ours


def open_regular(path: Path, follow: bool = False) -> int:
    """An fd open for reading on ``path``, never blocking on a FIFO or device: OSError unless
    ``path`` is a regular file (symlinks are followed only if ``follow``)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    flags |= 0 if follow else getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def read_json(path: Path) -> dict | None:
    """The sidecar's content, or None if it is missing, unreadable, not a regular file or too big
    (then we simply re-verify)."""
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            return None
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_ETAG = re.compile(r"^[\x20-\x7e]{1,1024}$")  # what may go back into an If-Range header
_PART_META_TYPES = {"repo": str, "filename": str, "sha256": (str, type(None)), "git_sha1": (str, type(None)),
                    "size": int, "commit": (str, type(None))}


def part_meta_problem(meta: dict) -> str | None:
    """Why a ``.part.json`` cannot be trusted (a field of the wrong type, an ETag that is no valid
    header value), or None. Such a sidecar and its ``.part`` are dropped, not retried forever."""
    for key, kinds in _PART_META_TYPES.items():
        value = meta.get(key)
        if key in meta and (isinstance(value, bool) or not isinstance(value, kinds)):
            return f"{key} = {value!r:.60}"
    etag = meta.get("cdn_etag")
    if etag is not None and not (isinstance(etag, str) and _ETAG.match(etag)):
        return f"cdn_etag = {etag!r:.60}"
    return None


def sidecar_matches(slot: Slot, sha256: str | None = None) -> dict | None:
    """The verified record if the file on disk is still the one that was verified, else None.

    Size and mtime are compared, not the hash: re-hashing gigabytes on every ``models`` call would
    be slow, and `verify_file` is there when a full check is wanted."""
    rec = read_json(slot.sidecar)
    try:
        st = slot.final.stat()
    except OSError:
        return None
    if not rec or rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        return None
    if sha256 is not None and rec.get("sha256") != sha256:
        return None
    return rec


# -----------------------------------------------------------------------------
# one process per file (row 36)

class FileLock:
    """An advisory lock on ``M.lock``; a second downloader waits, then finds the finished file.

    fcntl on POSIX, msvcrt on Windows. The lock file itself is left in place: deleting it would
    race with a process that has just opened it."""

    def __init__(self, path: Path, timeout: float = 3600.0, poll: float = 0.05,
                 on_wait: Callable[[str], None] | None = None):
        self.path, self.timeout, self.poll, self.on_wait = path, timeout, poll, on_wait
        self._fd: int | None = None

    def __enter__(self) -> "FileLock":
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(self.path, flags, 0o644)
        deadline = time.monotonic() + self.timeout
        locked = self._try_lock()
        if not locked and self.on_wait:  # say so at once, not after the wait
            self.on_wait(f"another process is downloading into {self.path.parent} (lock {self.path.name} "
                         f"is held); waiting up to {self.timeout:g} s for it to finish")
        while not locked:
            if time.monotonic() > deadline:
                os.close(self._fd)
                self._fd = None
                raise DownloadError(
                    f"gave up after {self.timeout:g} s waiting for another process that holds {self.path} "
                    "(another download of the same file still running?); try again later, or raise "
                    "Policy.lock_timeout")
            time.sleep(self.poll)
            locked = self._try_lock()
        return self

    def _try_lock(self) -> bool:
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(self._fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
                return False
            raise

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            if os.name == "nt":
                import msvcrt

                try:
                    msvcrt.locking(self._fd, msvcrt.LK_UNLCK, 1)
                except OSError:
                    pass
            os.close(self._fd)  # closing releases the flock
            self._fd = None


# -----------------------------------------------------------------------------
# listing

def detect_type(path: Path) -> str:
    """gguf / ggml (legacy GGML, GGMF, GGJT) / llama2c / llama2c-tokenizer / unknown, from the bytes."""
    try:
        with os.fdopen(open_regular(path, follow=True), "rb") as f:  # a FIFO must not hang `models`
            head = f.read(28)
    except OSError:
        return "unreadable"
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg"):  # 'ggml' 'ggmf' 'ggjt' as little-endian uint32
        return "ggml"
    if path.suffix == ".bin" and path.name.startswith(("tokenizer", "tok")):
        return "llama2c-tokenizer"
    if path.suffix == ".bin" and len(head) == 28:
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq = (
            int.from_bytes(head[i:i + 4], "little", signed=True) for i in range(0, 28, 4)
        )
        vocab = abs(vocab)  # llama2.c: negative vocab_size means an unshared classifier
        if min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq) > 0 and dim % n_heads == 0:
            return "llama2c"
    return "unknown"


def is_model_file(path: Path) -> bool:
    name = path.name
    return path.is_file() and not name.startswith(".") and not name.endswith(_AUX_SUFFIXES) \
        and not name.endswith(".tmp")


def list_local(folder: Path) -> list[dict]:
    """One row per model file in the folder: name, bytes, type, verified, partial bytes if any.
    A dangling symlink (or a file that vanishes while we look) is listed as ``broken``, never an
    error; FIFOs, sockets and devices are skipped unread."""
    rows = []
    if not folder.is_dir():
        return rows
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.endswith(".tmp"):
            continue
        try:
            row = _local_row(folder, path)
        except OSError:
            row = {"name": path.name, "path": str(path), "bytes": 0, "type": "broken",
                   "verified": False, "sha256": None}
        if row:
            rows.append(row)
    return rows


def _local_row(folder: Path, path: Path) -> dict | None:
    if path.is_symlink() and not path.exists():
        if path.name.endswith(_AUX_SUFFIXES[1:]):
            return None  # not a model: nothing to list
        raise OSError(errno.ENOENT, "dangling symlink", str(path))
    if path.name.endswith(PART) and not (folder / path.name[: -len(PART)]).exists():
        if not path.is_file():
            return None
        return {"name": path.name[: -len(PART)], "path": str(path), "bytes": path.stat().st_size,
                "type": "partial", "verified": False, "sha256": None}
    if not is_model_file(path):
        return None
    rec = sidecar_matches(Slot(folder, path.name))
    return {"name": path.name, "path": str(path), "bytes": path.stat().st_size,
            "type": detect_type(path), "verified": rec is not None,
            "sha256": rec.get("sha256") if rec else None}
