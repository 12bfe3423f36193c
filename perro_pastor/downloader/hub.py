"""Talking to the Hugging Face Hub (or anything at $HF_ENDPOINT that speaks its API).

What we need from the Hub before downloading a file is *what the file must be*: its SHA-256, its
size and the commit it belongs to. Two sources, in order of preference:

1. the model tree API, ``GET /api/models/{repo}/tree/{commit}/{folder}``: each LFS file lists
   ``lfs.oid`` (its SHA-256) and ``lfs.size``;
2. ``HEAD /{repo}/resolve/{rev}/{file}`` *without following the redirect*: the Hub answers with
   ``X-Linked-Etag`` (the LFS SHA-256), ``X-Linked-Size`` and ``X-Repo-Commit``.

The ETag of the CDN response after the redirect is *not* the SHA-256 (often an MD5 or multipart
hash), so it is never used for verification. A small non-LFS file has no SHA-256 on the Hub; its
git blob id (SHA-1 of ``b"blob <size>\\0" + content``) is verified instead.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from urllib.parse import quote

import requests
import urllib3

from ..errors import DownloadError

DEFAULT_ENDPOINT = "https://huggingface.co"
# A folder's tree listing is a few hundred bytes per file; a body past this is not a listing we
# can use, and parsing it whole would cost several times its size in memory.
MAX_TREE_LISTING_BYTES = 16 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class RemoteFile:
    """What a Hub file must be, pinned to one commit so every retry fetches the same bytes."""

    repo: str
    filename: str
    revision: str
    commit: str
    size: int
    sha256: str | None  # LFS files
    git_sha1: str | None  # small non-LFS files: the git blob id

    @property
    def url(self) -> str:
        return resolve_url(self.repo, self.commit, self.filename)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_ENDPOINT


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_url(repo: str, revision: str, filename: str) -> str:
    return f"{endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def new_session() -> requests.Session:
    """A session that asks for the raw bytes and sends HF_TOKEN to the Hub.

    requests drops the Authorization header when a redirect leaves the host, so the token does not
    leak to the CDN."""
    s = requests.Session()
    s.headers["Accept-Encoding"] = "identity"  # the SHA-256 is of the stored bytes, not a gzip of them
    s.headers["User-Agent"] = "perro_pastor-downloader/0.1"
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
    return s


def check_status(r: requests.Response, what: str) -> None:
    if r.status_code < 400:
        return
    if r.status_code in (401, 403):
        hint = "set HF_TOKEN to a token that can read it" if not os.environ.get("HF_TOKEN") \
            else "HF_TOKEN was sent but refused; accept the licence on the model page"
        raise DownloadError(f"{what}: HTTP {r.status_code}, the repository is gated or private ({hint})")
    if r.status_code == 404:
        raise DownloadError(f"{what}: not found (HTTP 404) at {endpoint()}")
    raise Retryable(f"{what}: HTTP {r.status_code}") if r.status_code >= 500 or r.status_code == 429 \
        else DownloadError(f"{what}: HTTP {r.status_code}")


class Retryable(DownloadError):
    """A fault worth retrying (5xx, 429, connection reset, timeout, stall)."""


class Unreachable(Retryable):
    """No connection could be made at all (DNS failure, connection refused, no route): worth a
    short retry, not minutes of backoff. Offline is the usual reason."""


def unreachable_reason(e: requests.RequestException) -> str | None:
    """Why no connection could be made ("connection refused", "cannot resolve huggingface.co: ..."),
    or None when the server was reached and the exchange failed later (worth the full retries)."""
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return "no answer to the connection attempt (connect timeout)"
    if not isinstance(e, requests.exceptions.ConnectionError) or isinstance(e, requests.exceptions.ProxyError):
        return None
    cause = e.args[0] if e.args else None
    reason = getattr(cause, "reason", cause)  # requests wraps urllib3's MaxRetryError
    if not isinstance(reason, urllib3.exceptions.NewConnectionError):
        return None
    detail = re.findall(r"\[Errno -?\d+\] ([^)\]]+)", str(reason))
    text = detail[-1].strip() if detail else "cannot connect"
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        host = getattr(reason, "_host", None) or "the host"
        return f"cannot resolve {host} ({text}; no network?)"
    return text[:1].lower() + text[1:]


def _unquote_etag(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"').lower()


def file_info(session: requests.Session, repo: str, filename: str, revision: str,
              timeout: float = 30.0) -> RemoteFile:
    """Ask the Hub what ``repo/filename@revision`` must hash to. Raises DownloadError."""
    what = f"{repo}/{filename}@{revision}"
    try:
        head = session.head(resolve_url(repo, revision, filename), allow_redirects=False, timeout=timeout)
    except requests.RequestException as e:
        why = unreachable_reason(e)
        if why:
            raise Unreachable(f"{what}: cannot reach {endpoint()}: {why}") from e
        raise Retryable(f"{what}: cannot reach {endpoint()}: {type(e).__name__}") from e
    check_status(head, what)
    commit = (head.headers.get("X-Repo-Commit") or "").lower()
    if not _HEX40.match(commit):
        raise DownloadError(f"{what}: the server sent no usable X-Repo-Commit header ({commit!r}); "
                            "is HF_ENDPOINT a Hugging Face Hub?")
    linked_sha = _unquote_etag(head.headers.get("X-Linked-Etag"))
    linked_size = head.headers.get("X-Linked-Size")

    entry = _tree_entry(session, repo, filename, commit, timeout, what)
    lfs = entry.get("lfs") if entry else None
    if lfs:
        sha256, size = str(lfs.get("oid", "")).lower(), lfs.get("size")
        if linked_sha and _HEX64.match(linked_sha) and linked_sha != sha256:
            raise DownloadError(f"{what}: the Hub disagrees with itself: tree API sha256 {sha256}, "
                                f"X-Linked-Etag {linked_sha}")
    elif linked_sha and _HEX64.match(linked_sha):
        sha256, size = linked_sha, int(linked_size) if linked_size and linked_size.isdigit() else None
    else:
        sha256, size = None, None
    git_sha1 = None
    if sha256 is None:
        # Not an LFS file: the tree lists its git blob id, the resolve HEAD its ETag.
        oid = str(entry.get("oid", "")).lower() if entry else _unquote_etag(head.headers.get("ETag"))
        size = entry.get("size") if entry else head.headers.get("Content-Length")
        if not oid or not _HEX40.match(oid):
            raise DownloadError(f"{what}: the Hub gave no SHA-256 (no LFS entry, no X-Linked-Etag) and "
                                "no git blob id; refusing to download a file that cannot be verified")
        git_sha1 = oid
    if not _HEX64.match(sha256 or "0" * 64) or not isinstance(size, (int, str)) or not str(size).isdigit():
        raise DownloadError(f"{what}: malformed hash or size from the Hub: sha256={sha256!r} size={size!r}")
    return RemoteFile(repo, filename, revision, commit, int(size), sha256, git_sha1)


def _tree_entry(session: requests.Session, repo: str, filename: str, commit: str,
                timeout: float, what: str) -> dict | None:
    """The tree API's entry for ``filename`` at ``commit``, or None if the API gave nothing usable."""
    folder = filename.rsplit("/", 1)[0] if "/" in filename else ""
    url = f"{endpoint()}/api/models/{repo}/tree/{commit}" + (f"/{quote(folder)}" if folder else "")
    try:
        with session.get(url, timeout=timeout, stream=True) as r:
            if r.status_code == 404:
                return None
            check_status(r, f"{what} (tree API)")
            body = bytearray()
            for chunk in r.iter_content(1 << 16):
                body += chunk
                if len(body) > MAX_TREE_LISTING_BYTES:
                    raise DownloadError(f"{what}: the tree API sent more than "
                                        f"{MAX_TREE_LISTING_BYTES:,} bytes for one folder; refusing it")
    except requests.RequestException as e:
        raise Retryable(f"{what}: tree API unreachable: {type(e).__name__}") from e
    try:
        listing = json.loads(body)
    except ValueError:
        return None
    if not isinstance(listing, list):
        return None
    for item in listing:
        if isinstance(item, dict) and item.get("path") == filename and item.get("type") == "file":
            return item
    return None
