"""A loopback HTTP server that behaves like the Hugging Face Hub, and misbehaves on request.

It answers the three requests the downloader makes:

- ``GET /api/models/{owner}/{repo}/tree/{rev}[/{folder}]``: the listing, with ``lfs.oid`` (sha256);
- ``HEAD|GET /{owner}/{repo}/resolve/{rev}/{path}``: for an LFS file a 302 to ``/cdn/{sha256}``
  with ``X-Linked-Etag``, ``X-Linked-Size`` and ``X-Repo-Commit``; a small file is served in place
  with its git blob id as ETag;
- ``GET /cdn/{sha256}``: the bytes, with ``Range``/``If-Range`` and a CDN-style ETag that is
  deliberately *not* the sha256.

Faults are queued on ``server.faults``; each CDN GET consumes the first one. Kinds: ``cut``
(close after ``n`` body bytes), ``ignore_range`` (200 with the whole file), ``bad_range`` (206
whose Content-Range starts ``shift`` bytes off), ``status`` (reply ``code``), ``corrupt``
(flip one byte), ``extra`` (no Content-Length, ``n`` bytes of garbage after the file), ``hang``
(send ``n`` bytes then go silent), ``drip`` (one byte every ``interval`` s), ``gzip`` (claim
Content-Encoding gzip), ``slow`` (the whole body in ``parts`` pieces ``interval`` s apart),
``swap`` (the CDN object changes: new bytes and a new ETag, as after an upstream re-upload).
"""

from __future__ import annotations

import pytest

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos: dict[str, dict] = {}  # repo -> {"commit": str, "files": {path: bytes}, "lfs": set}
        self.faults: list[dict] = []
        self.token: str | None = None  # when set, every Hub request needs "Bearer <token>"
        self.tree_api = True  # False: the tree API 404s, only X-Linked-Etag remains
        self.tree_padding = 0  # extra made-up entries in every tree listing (a huge listing)
        self.cdn_content: dict[str, bytes] = {}  # sha256 path -> bytes actually served
        self.log: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()

    def put(self, repo: str, path: str, data: bytes, lfs: bool = True) -> str:
        """Publish (or replace, as a new commit) a file; returns its sha256."""
        r = self.repos.setdefault(repo, {"files": {}, "lfs": set(), "n": 0})
        r["n"] += 1
        r["commit"] = hashlib.sha1(f"{repo}{r['n']}{len(data)}".encode()).hexdigest()
        r["files"][path] = data
        (r["lfs"].add if lfs else r["lfs"].discard)(path)
        sha = hashlib.sha256(data).hexdigest()
        self.cdn_content[sha] = data
        return sha

    def cdn_gets(self) -> list[dict]:
        return [h for m, p, h in self.log if m == "GET" and p.startswith("/cdn/")]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one response per connection; a cut is just a close
    server: FakeHub

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = unquote(self.path.split("?")[0])
        with self.server.lock:
            self.server.log.append((self.command, path, dict(self.headers)))
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}" \
                and not path.startswith("/cdn/"):
            return self._reply(401, b"gated", head=head)
        if m := re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path):
            return self._tree(m[1], m[2], m[3] or "")
        if m := re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path):
            return self._resolve(m[1], m[2], m[3], head)
        if m := re.match(r"^/cdn/([0-9a-f]{64})$", path):
            return self._cdn(m[1], head)
        self._reply(404, b"no route", head=head)

    def _reply(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _repo(self, repo: str, rev: str) -> dict | None:
        r = self.server.repos.get(repo)
        return r if r and rev in ("main", r["commit"]) else None

    def _tree(self, repo: str, rev: str, folder: str) -> None:
        r = self._repo(repo, rev)
        if r is None or not self.server.tree_api:
            return self._reply(404, b"{}")
        items = []
        for p, data in r["files"].items():
            parent = p.rsplit("/", 1)[0] if "/" in p else ""
            if parent != folder:
                continue
            item = {"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)}
            if p in r["lfs"]:
                item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            items.append(item)
        items += [{"type": "file", "path": f"{folder}/pad{i}".lstrip("/"), "size": 1, "oid": "0" * 40}
                  for i in range(self.server.tree_padding)]
        self._reply(200, json.dumps(items).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo: str, rev: str, path: str, head: bool) -> None:
        r = self._repo(repo, rev)
        if r is None or path not in r["files"]:
            return self._reply(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, head)
        data = r["files"][path]
        common = {"X-Repo-Commit": r["commit"]}
        if path in r["lfs"]:
            sha = hashlib.sha256(data).hexdigest()
            return self._reply(302, b"", {**common, "Location": f"{self.server.url}/cdn/{sha}",
                                          "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                          "ETag": f'"{git_blob_sha1(data)}"'}, head)
        self._reply(200, data, {**common, "ETag": f'"{git_blob_sha1(data)}"'}, head)

    def _cdn(self, sha: str, head: bool) -> None:
        with self.server.lock:
            fault = self.server.faults.pop(0) if (self.server.faults and not head) else {}
            if fault.get("kind") == "swap":
                self.server.cdn_content[sha] = fault["data"]
            data = self.server.cdn_content.get(sha)
        if data is None:
            return self._reply(404, b"", head=head)
        kind = fault.get("kind")
        etag = '"cdn-' + hashlib.md5(data).hexdigest() + '"'  # a CDN etag: NOT the sha256
        if kind == "status":
            return self._reply(fault["code"], b"error", head=head)
        if kind == "corrupt":
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            data = bytes(data)
        start, code = 0, 200
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        if rng and kind != "ignore_range" and (if_range is None or if_range == etag):
            m = re.match(r"^bytes=(\d+)-$", rng)
            start = int(m[1]) if m else 0
            if start >= len(data):
                return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
            code = 206
        body = data[start:]
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Length": str(len(body))}
        if code == 206:
            first = start + fault.get("shift", 0) if kind == "bad_range" else start
            headers["Content-Range"] = f"bytes {first}-{len(data) - 1}/{len(data)}"
        if kind == "gzip":
            headers["Content-Encoding"] = "gzip"
        if kind == "extra":
            del headers["Content-Length"]
            body = body + b"\0" * fault["n"]
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        try:
            self._send_body(body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_body(self, body: bytes, fault: dict) -> None:
        kind = fault.get("kind")
        if kind == "cut":
            self.wfile.write(body[: fault["n"]])
            return  # HTTP/1.0: returning closes the connection short of Content-Length
        if kind == "hang":
            self.wfile.write(body[: fault["n"]])
            self.wfile.flush()
            self.server.stop.wait(fault.get("seconds", 5.0))
            return
        if kind == "drip":
            for i in range(len(body)):
                if self.server.stop.wait(fault["interval"]):
                    return
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
            return
        if kind == "slow":
            step = max(1, len(body) // fault["parts"])
            for i in range(0, len(body), step):
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                if self.server.stop.wait(fault["interval"]):
                    return
            return
        self.wfile.write(body)


def main() -> None:
    """``python tests/hub_server.py FILE...``: serve files as test/repo (to try the CLI by hand)."""
    import sys
    from pathlib import Path

    hub = FakeHub()
    for f in sys.argv[1:]:
        hub.put("test/repo", Path(f).name, Path(f).read_bytes())
    hub.start()
    print(f"HF_ENDPOINT={hub.url}  (files: test/repo/<name>)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.close()


if __name__ == "__main__":
    main()


@pytest.fixture
def hub(monkeypatch):
    """A FakeHub on loopback that the downloader talks to (HF_ENDPOINT), with no token set."""
    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "PERRO_PASTOR_MODELS"):
        monkeypatch.delenv(var, raising=False)
    yield server
    server.close()
