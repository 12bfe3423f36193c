"""Move one verified file from the Hub into the model folder: resumable, bounded, atomic.

The invariants (RELIABILITY.md rows 27-37):

- bytes only ever go to ``M.part``; ``M`` appears by one ``os.replace`` after the SHA-256 matched;
- a ``.part`` is resumed only if ``M.part.json`` says it holds a prefix of *the same* content
  (same expected hash and size); otherwise it is dropped and the download restarts from 0;
- a 206 is accepted only if its ``Content-Range`` starts exactly where the ``.part`` ends and
  names the expected total; a 200 to a ranged request truncates the ``.part`` first. Never splice;
- no byte past the expected size is written;
- every network wait is bounded (connect/read timeouts, a stall watchdog, an optional deadline)
  and transient faults are retried with exponential backoff;
- a full disk is reported with the bytes still needed; the ``.part`` stays for a later resume.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

import requests
import urllib3

from ..errors import DownloadError
from .hub import RemoteFile, check_status, Retryable
from .model_folder import FileLock, Slot, part_meta_problem, read_json, sidecar_matches, write_json


@dataclass(frozen=True)
class Policy:
    """Time and retry limits for one file. Tests shrink them; the defaults suit a home link."""

    attempts: int = 8
    backoff: float = 1.0  # first wait after a failure, doubled each time ...
    backoff_max: float = 30.0  # ... up to this
    connect_attempts: int = 3  # a Hub that cannot be reached at all (offline: DNS, refused) ...
    connect_backoff: float = 0.5  # ... is tried this often, this long apart (doubled): seconds, not minutes
    connect_timeout: float = 15.0
    read_timeout: float = 30.0  # silence longer than this aborts the attempt
    stall_window: float = 30.0  # every window must bring at least stall_min_bytes (slow-loris guard)
    stall_min_bytes: int = 32 * 1024
    deadline: float | None = None  # seconds for the whole file, retries included
    lock_timeout: float = 3600.0  # longest wait for another process downloading the same file
    chunk: int = 1 << 20


@dataclass
class Progress:
    """One progress event. ``state``: checking, waiting-lock, resuming, downloading, retrying,
    restarting, verifying, done."""

    filename: str
    state: str
    done: int
    total: int
    resumed_from: int = 0
    attempt: int = 1
    message: str = ""


ProgressFn = Callable[[Progress], None]


@dataclass
class FetchResult:
    path: str
    sha256: str
    bytes: int
    resumed: bool
    resumed_from: int
    verified: bool
    already_present: bool
    repo: str
    filename: str
    commit: str
    notes: list[str] = field(default_factory=list)


class _Restart(Exception):
    """The server sent something we must not append to the .part; start again from byte 0."""


_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NET_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def fetch(session: requests.Session, remote: RemoteFile, slot: Slot, policy: Policy = Policy(),
          progress: ProgressFn | None = None) -> FetchResult:
    """Download ``remote`` to ``slot.final`` (see the module docstring). Raises DownloadError."""
    emit = progress or (lambda p: None)
    slot.check_no_symlinks()
    emit(Progress(remote.filename, "waiting-lock", 0, remote.size))
    def waiting(message: str) -> None:
        emit(Progress(remote.filename, "waiting-lock", 0, remote.size, message=message))
    with FileLock(slot.lock, policy.lock_timeout, on_wait=waiting):
        # A second process that waited on the lock finds the first one's result here (row 36).
        rec = sidecar_matches(slot, remote.sha256) if remote.sha256 else _git_match(slot, remote)
        if rec:
            emit(Progress(remote.filename, "done", remote.size, remote.size))
            return _result(slot, remote, rec["sha256"], resumed_from=0, already=True)
        notes: list[str] = []
        resumed_from = _prepare_part(slot, remote, notes, emit)
        _check_space(slot, remote.size - resumed_from)
        _transfer_with_retries(session, remote, slot, policy, emit, notes, resumed_from)
        sha256 = _verify(slot, remote, emit)
        _install(slot, remote, sha256)
        emit(Progress(remote.filename, "done", remote.size, remote.size, resumed_from))
        res = _result(slot, remote, sha256, resumed_from, already=False)
        res.notes = notes
        return res


def _result(slot: Slot, remote: RemoteFile, sha256: str, resumed_from: int, already: bool) -> FetchResult:
    return FetchResult(str(slot.final), sha256, remote.size, resumed_from > 0, resumed_from, True,
                       already, remote.repo, remote.filename, remote.commit)


def _git_match(slot: Slot, remote: RemoteFile) -> dict | None:
    rec = sidecar_matches(slot)
    return rec if rec and rec.get("git_sha1") == remote.git_sha1 else None


def _identity(remote: RemoteFile) -> dict:
    """What a .part must be a prefix of. The commit is informational: same hash, same bytes."""
    return {"repo": remote.repo, "filename": remote.filename, "sha256": remote.sha256,
            "git_sha1": remote.git_sha1, "size": remote.size}


def _prepare_part(slot: Slot, remote: RemoteFile, notes: list[str], emit: ProgressFn) -> int:
    """Keep the .part if it is a prefix of this exact content, else drop it. Returns its size."""
    meta = read_json(slot.part_meta) or {}
    have = slot.part.stat().st_size if slot.part.exists() else 0
    same = all(meta.get(k) == v for k, v in _identity(remote).items())
    bad = part_meta_problem(meta)
    if bad or (have and (not same or have > remote.size)):
        why = f"{slot.part_meta.name} holds a bad value ({bad})" if bad else \
            "the file changed upstream" if meta.get("sha256") or meta.get("git_sha1") else "its origin is unknown"
        notes.append(f"discarded {have} bytes in {slot.part.name}: {why}; restarting from 0")
        emit(Progress(remote.filename, "restarting", 0, remote.size, message=notes[-1]))
        slot.part.unlink(missing_ok=True)
        have = 0
        meta = {}
    write_json(slot.part_meta, {**_identity(remote), "commit": remote.commit, "cdn_etag": meta.get("cdn_etag")})
    if have:
        notes.append(f"resuming {remote.filename} from {have} of {remote.size} bytes")
        emit(Progress(remote.filename, "resuming", have, remote.size, have, message=notes[-1]))
    return have


def _check_space(slot: Slot, needed: int) -> None:
    try:
        free = shutil.disk_usage(slot.folder).free
    except OSError:
        return
    if needed > free:
        raise DownloadError(f"not enough disk space in {slot.folder} for {slot.name}: "
                            f"{needed} more bytes needed, {free} free")


def _transfer_with_retries(session, remote, slot, policy, emit, notes, resumed_from) -> None:
    start = time.monotonic()
    last = ""
    for attempt in range(1, policy.attempts + 1):
        if policy.deadline is not None and time.monotonic() - start > policy.deadline:
            raise DownloadError(f"{remote.filename}: gave up after {policy.deadline:.0f} s (deadline); "
                                f"{_part_size(slot)} bytes kept in {slot.part} for a later resume")
        try:
            _transfer(session, remote, slot, policy, emit, attempt, resumed_from, start)
            return
        except _Restart as e:
            last = str(e)
            notes.append(f"{e}; restarting from 0")
            emit(Progress(remote.filename, "restarting", 0, remote.size, attempt=attempt, message=notes[-1]))
            slot.part.unlink(missing_ok=True)
        except (Retryable, *_NET_ERRORS) as e:
            last = str(e) if isinstance(e, Retryable) else f"{type(e).__name__}: {e}"
            if attempt == policy.attempts:
                break
            wait = min(policy.backoff * 2 ** (attempt - 1), policy.backoff_max)
            emit(Progress(remote.filename, "retrying", _part_size(slot), remote.size, attempt=attempt,
                          message=f"{last}; retry {attempt + 1}/{policy.attempts} in {wait:.1f} s"))
            time.sleep(wait)
    raise DownloadError(f"{remote.filename}: failed after {policy.attempts} attempts: {last}; "
                        f"{_part_size(slot)} bytes kept in {slot.part}, run again to resume")


def _part_size(slot: Slot) -> int:
    try:
        return slot.part.stat().st_size
    except OSError:
        return 0


def _transfer(session, remote: RemoteFile, slot: Slot, policy: Policy, emit: ProgressFn,
              attempt: int, resumed_from: int, started: float) -> None:
    """One HTTP attempt: continue the .part from where it ends, or from 0 when we must."""
    have = _part_size(slot)
    if have == remote.size:
        return  # complete from an earlier run; verification decides
    meta = read_json(slot.part_meta) or {}
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        if meta.get("cdn_etag"):
            headers["If-Range"] = meta["cdn_etag"]  # changed upstream -> the server sends a 200
    r = session.get(remote.url, headers=headers, stream=True,
                    timeout=(policy.connect_timeout, policy.read_timeout))
    with r:
        if r.status_code == 416:
            raise _Restart(f"server refused Range bytes={have}- (HTTP 416)")
        check_status(r, f"{remote.repo}/{remote.filename}")
        encoding = r.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("", "identity"):
            raise DownloadError(f"{remote.filename}: server sent Content-Encoding {encoding!r} "
                                "although identity was asked; refusing to hash transformed bytes")
        if r.status_code == 206:
            start = _check_content_range(r.headers.get("Content-Range", ""), have, remote.size)
        elif r.status_code == 200:
            start = 0
            if have:
                emit(Progress(remote.filename, "restarting", 0, remote.size, attempt=attempt,
                              message="server ignored Range (HTTP 200); restarting from 0"))
        else:
            raise Retryable(f"{remote.filename}: unexpected HTTP {r.status_code}")
        length = r.headers.get("Content-Length")
        if length and length.isdigit() and start + int(length) != remote.size:
            raise (_Restart if start else DownloadError)(
                f"{remote.filename}: server announces {length} bytes from offset {start}, "
                f"expected {remote.size - start} (file size {remote.size})")
        if r.headers.get("ETag"):
            write_json(slot.part_meta, {**meta, "cdn_etag": r.headers["ETag"]})
        state = "resuming" if start else "downloading"
        _stream_body(r, remote, slot, policy, emit, attempt, start, resumed_from, started, state)


def _check_content_range(value: str, have: int, size: int) -> int:
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        raise _Restart(f"malformed Content-Range {value!r}")
    first, last, total = int(m[1]), int(m[2]), m[3]
    if first != have or last != size - 1 or (total != "*" and int(total) != size):
        raise _Restart(f"Content-Range {value!r} does not continue {have} bytes of a {size}-byte file")
    return first


def _stream_body(r, remote, slot, policy, emit, attempt, start, resumed_from, started, state) -> None:
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(slot.part, flags, 0o644)
    pos = start
    try:
        _disk_op(lambda: os.ftruncate(fd, start), slot, pos, remote.size)
        os.lseek(fd, start, os.SEEK_SET)
        window_start, window_bytes, overflow = time.monotonic(), 0, False
        while pos < remote.size:
            data = r.raw.read1(policy.chunk, decode_content=False)
            if not data:
                break
            now = time.monotonic()
            overflow = len(data) > remote.size - pos
            data = data[: remote.size - pos]
            _write_all(fd, data, slot, pos, remote.size)
            pos += len(data)
            window_bytes += len(data)
            emit(Progress(remote.filename, state, pos, remote.size, resumed_from, attempt))
            if now - window_start >= policy.stall_window:
                if window_bytes < policy.stall_min_bytes and pos < remote.size:
                    raise Retryable(f"{remote.filename}: stalled, {window_bytes} bytes in "
                                     f"{now - window_start:.1f} s (minimum {policy.stall_min_bytes})")
                window_start, window_bytes = now, 0
            if policy.deadline is not None and now - started > policy.deadline:
                raise DownloadError(f"{remote.filename}: gave up after {policy.deadline:.0f} s (deadline); "
                                    f"{pos} bytes kept in {slot.part} for a later resume")
        if pos == remote.size and (overflow or r.raw.read1(1, decode_content=False)):
            # Row 32: more bytes than the Hub promised. What we kept may be wrong too: drop it.
            os.close(fd)
            fd = -1
            slot.part.unlink(missing_ok=True)
            raise DownloadError(f"{remote.filename}: server sent more than the expected {remote.size} bytes; "
                                "partial file deleted")
        _disk_op(lambda: os.fsync(fd), slot, pos, remote.size)
    finally:
        if fd >= 0:
            os.close(fd)
    if pos < remote.size:
        raise Retryable(f"{remote.filename}: connection closed after {pos} of {remote.size} bytes")


def _write_all(fd: int, data: bytes, slot: Slot, pos: int, size: int) -> None:
    view = memoryview(data)
    while view:
        n = _disk_op(lambda: os.write(fd, view), slot, pos, size)
        view, pos = view[n:], pos + n


def _disk_op(op, slot: Slot, pos: int, size: int):
    """Run a write/fsync; a full disk or file-size limit becomes one clear DownloadError (row 34)."""
    try:
        return op()
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise DownloadError(
                f"disk full writing {slot.part} ({os.strerror(e.errno)}): {pos} of {size} bytes written, "
                f"{size - pos} more bytes needed; the partial file is kept, free space and run again to resume"
            ) from e
        raise DownloadError(f"cannot write {slot.part}: {e.strerror or e}") from e


# -----------------------------------------------------------------------------
# verification and the atomic swap

def hash_file(path, on_bytes: Callable[[int], None] | None = None) -> tuple[str, str, int]:
    """(sha256, git blob sha1, size) of a file in one pass."""
    size = os.path.getsize(path)
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    done = 0
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            sha256.update(block)
            sha1.update(block)
            done += len(block)
            if on_bytes:
                on_bytes(done)
    return sha256.hexdigest(), sha1.hexdigest(), size


def _verify(slot: Slot, remote: RemoteFile, emit: ProgressFn) -> str:
    """Hash the .part; on a mismatch delete it so nothing wrong can ever be installed (row 31)."""
    sha256, sha1, size = hash_file(slot.part, lambda n: emit(Progress(remote.filename, "verifying", n, remote.size)))
    ok, expected, got = (sha256 == remote.sha256, remote.sha256, sha256) if remote.sha256 \
        else (sha1 == remote.git_sha1, f"git blob {remote.git_sha1}", f"git blob {sha1}")
    if size != remote.size or not ok:
        slot.part.unlink(missing_ok=True)
        slot.part_meta.unlink(missing_ok=True)
        raise DownloadError(f"{remote.repo}/{remote.filename}: sha256 mismatch, expected {expected} got {got} "
                            f"({size} of {remote.size} bytes); the partial file was deleted, nothing was installed")
    return sha256


def _install(slot: Slot, remote: RemoteFile, sha256: str) -> None:
    """Atomic rename, then the sidecar that lets ``models`` say "verified" (rows 36, 37)."""
    for wait in (0.0, 0.2, 0.5, 1.0):
        time.sleep(wait)
        try:
            os.replace(slot.part, slot.final)
            break
        except PermissionError as e:
            error = e  # Windows: the old file is open or memory-mapped by a running game
    else:
        raise DownloadError(f"cannot replace {slot.final}: {error.strerror or error} (is the model loaded?); "
                            f"the verified download is kept in {slot.part}; run again after unloading it")
    _fsync_dir(slot.folder)
    st = slot.final.stat()
    write_json(slot.sidecar, {
        "sha256": sha256, "git_sha1": remote.git_sha1, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "repo": remote.repo, "filename": remote.filename, "revision": remote.revision,
        "commit": remote.commit, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    slot.part_meta.unlink(missing_ok=True)


def _fsync_dir(folder) -> None:
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
