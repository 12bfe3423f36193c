"""The downloader against a real loopback HTTP server that mimics the Hub (tests/hub_server.py).

Nothing is mocked at the HTTP layer: requests talks to a socket. Each RELIABILITY.md row 27-37 is
injected as a server fault; the assertions are about what ends up on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub_server import hub  # noqa: F401 -- the fixture: a FakeHub on loopback
from perro_pastor.errors import DownloadError
from perro_pastor.downloader import download as dl
from perro_pastor.downloader import fetch as fetch_mod
from perro_pastor.downloader.catalog import CATALOG, resolve_spec
from perro_pastor.downloader.fetch import Policy
from perro_pastor.downloader.model_folder import detect_type, safe_filename

FAST = Policy(attempts=4, backoff=0.01, backoff_max=0.05, connect_timeout=2.0, read_timeout=0.5,
              stall_window=0.3, stall_min_bytes=4000)
REPO, FILE = "owner/npc-model", "npc.gguf"
SPEC = f"{REPO}/{FILE}"


@pytest.fixture
def blob(hub) -> bytes:
    data = b"GGUF" + os.urandom(256 * 1024 - 4)
    hub.put(REPO, FILE, data)
    return data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def only_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def fail_once_leaving_part(hub, folder: Path, cut: int) -> None:
    """One run that dies mid-body with no retries left: a .part of `cut` bytes stays."""
    hub.faults.append({"kind": "cut", "n": cut})
    with pytest.raises(DownloadError, match="kept in"):
        dl.download(SPEC, folder, policy=Policy(attempts=1, read_timeout=2.0))
    assert (folder / (FILE + ".part")).stat().st_size == cut


# -----------------------------------------------------------------------------
# the happy path and what the Hub says about a file

def test_download_verifies_installs_and_records(hub, blob, tmp_path):
    events = []
    [r] = dl.download(SPEC, tmp_path, policy=FAST, progress=events.append)
    assert Path(r.path).read_bytes() == blob
    assert (r.sha256, r.bytes, r.verified, r.resumed) == (sha(blob), len(blob), True, False)
    assert only_files(tmp_path) == {FILE, FILE + ".download.json", FILE + ".lock"}
    assert events[-1].state == "done" and events[-1].done == len(blob)
    assert any(e.state == "verifying" for e in events)
    # the body came from the CDN path the resolve URL redirected to, pinned at the commit
    assert [p for m, p, _ in hub.log if m == "GET" and "/resolve/" in p] == \
        [f"/{REPO}/resolve/{hub.repos[REPO]['commit']}/{FILE}"]
    # a second run finds the verified file and moves no body bytes
    [again] = dl.download(SPEC, tmp_path, policy=FAST)
    assert again.already_present and len(hub.cdn_gets()) == 1
    [row] = dl.list_models(tmp_path)["local"]
    assert (row["name"], row["type"], row["verified"], row["sha256"]) == (FILE, "gguf", True, sha(blob))


def test_sha256_from_x_linked_etag_when_tree_api_is_missing(hub, blob, tmp_path):
    hub.tree_api = False
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert r.sha256 == sha(blob) and r.verified


def test_small_non_lfs_file_is_verified_by_git_blob_id(hub, tmp_path):
    data = os.urandom(5000)
    hub.put(REPO, "tokenizer.bin", data, lfs=False)
    [r] = dl.download(f"{REPO}/tokenizer.bin", tmp_path, policy=FAST)
    assert Path(r.path).read_bytes() == data and r.verified


def test_a_file_edited_after_verification_is_no_longer_listed_verified(hub, blob, tmp_path):
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    with open(r.path, "ab") as f:
        f.write(b"tampered")
    assert dl.list_models(tmp_path)["local"][0]["verified"] is False


def test_catalog_names_are_valid_and_multi_file_entries_fetch_every_file(hub, tmp_path):
    for name in CATALOG:
        _, files = resolve_spec(name)
        assert files and all(f.repo.count("/") == 1 for f in files)
    model, tok = os.urandom(40_000), os.urandom(3_000)
    hub.put("karpathy/tinyllamas", "stories15M.bin", model)
    hub.put("karpathy/tinyllamas", "tokenizer.bin", tok)
    results = dl.download("stories15M", tmp_path, policy=FAST)
    assert [Path(r.path).read_bytes() for r in results] == [model, tok]


def test_default_resolves_offline_and_is_checked_against_the_wheel_record(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    [r] = dl.download("default")
    assert r.verified and r.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and r.bytes == 98_362_432


# -----------------------------------------------------------------------------
# rows 27-30: interrupted bodies, Range, Content-Range, upstream changes

def test_cut_connection_resumes_with_range(hub, blob, tmp_path):
    hub.faults.append({"kind": "cut", "n": 100_000})
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert Path(r.path).read_bytes() == blob
    assert [h.get("Range") for h in hub.cdn_gets()] == [None, "bytes=100000-"]
    assert hub.cdn_gets()[1].get("If-Range", "").startswith('"cdn-')


def test_next_run_resumes_the_part_and_says_so(hub, blob, tmp_path):
    fail_once_leaving_part(hub, tmp_path, 70_000)
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert (r.resumed, r.resumed_from) == (True, 70_000)
    assert any("resuming" in n for n in r.notes)
    assert Path(r.path).read_bytes() == blob


def test_server_ignoring_range_restarts_cleanly_never_splices(hub, blob, tmp_path):
    fail_once_leaving_part(hub, tmp_path, 50_000)
    hub.faults.append({"kind": "ignore_range"})
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert Path(r.path).stat().st_size == len(blob) and Path(r.path).read_bytes() == blob
    assert len(hub.cdn_gets()) == 2  # the 200 body itself was used, written from byte 0


@pytest.mark.parametrize("fault", [{"kind": "bad_range", "shift": 7}, {"kind": "bad_range", "shift": -7},
                                   {"kind": "status", "code": 416}])
def test_wrong_content_range_or_416_restarts_from_zero(hub, blob, tmp_path, fault):
    fail_once_leaving_part(hub, tmp_path, 60_000)
    hub.faults.append(fault)
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert Path(r.path).read_bytes() == blob
    assert any("restarting from 0" in n for n in r.notes)
    assert hub.cdn_gets()[-1].get("Range") is None


def test_file_changed_upstream_between_runs_discards_the_old_part(hub, blob, tmp_path):
    fail_once_leaving_part(hub, tmp_path, 80_000)
    new = os.urandom(200_000)
    hub.put(REPO, FILE, new)  # a new commit with different content
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert Path(r.path).read_bytes() == new and not r.resumed
    assert any("changed upstream" in n for n in r.notes)


def test_cdn_object_changing_mid_download_is_never_installed(hub, blob, tmp_path):
    hub.faults += [{"kind": "cut", "n": 90_000}, {"kind": "swap", "data": os.urandom(len(blob))}]
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        dl.download(SPEC, tmp_path, policy=FAST)
    assert hub.cdn_gets()[1].get("If-Range")  # the server saw the etag change and sent a 200
    assert only_files(tmp_path) == {FILE + ".lock"}


# -----------------------------------------------------------------------------
# rows 31-33: wrong bytes, too many bytes, stalls

def test_sha_mismatch_deletes_part_and_installs_nothing(hub, blob, tmp_path):
    hub.faults.append({"kind": "corrupt"})
    with pytest.raises(DownloadError, match=f"sha256 mismatch, expected {sha(blob)} got [0-9a-f]{{64}}"):
        dl.download(SPEC, tmp_path, policy=FAST)
    assert only_files(tmp_path) == {FILE + ".lock"}


@pytest.mark.parametrize("fault,message", [({"kind": "extra", "n": 5000}, "more than the expected"),
                                           ({"kind": "gzip"}, "Content-Encoding")])
def test_extra_bytes_or_gzip_are_refused(hub, blob, tmp_path, fault, message):
    hub.faults.append(fault)
    with pytest.raises(DownloadError, match=message):
        dl.download(SPEC, tmp_path, policy=FAST)
    assert FILE not in only_files(tmp_path)
    assert hub.log[0][2].get("Accept-Encoding") == "identity"


def test_silent_server_hits_read_timeout_then_retry_succeeds(hub, blob, tmp_path):
    hub.faults.append({"kind": "hang", "n": 30_000, "seconds": 3.0})
    events = []
    t0 = time.monotonic()
    [r] = dl.download(SPEC, tmp_path, policy=FAST, progress=events.append)
    assert Path(r.path).read_bytes() == blob and time.monotonic() - t0 < 2.5
    assert any(e.state == "retrying" for e in events)


def test_slow_loris_trips_the_stall_watchdog(hub, blob, tmp_path):
    # one byte every 10 ms never trips the 0.5 s read timeout; only the watchdog catches it
    hub.faults += [{"kind": "drip", "interval": 0.01}] * 4
    with pytest.raises(DownloadError, match="stalled"):
        dl.download(SPEC, tmp_path, policy=FAST)
    assert FILE not in only_files(tmp_path)


def test_server_errors_are_retried_with_backoff(hub, blob, tmp_path):
    hub.faults += [{"kind": "status", "code": 503}, {"kind": "status", "code": 500}]
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert Path(r.path).read_bytes() == blob and len(hub.cdn_gets()) == 3


# -----------------------------------------------------------------------------
# row 34: disk full, in a subprocess whose file size is capped with RLIMIT_FSIZE

def run_cli(args: list[str], hub, extra_env: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_ENDPOINT": hub.url, **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "perro_pastor.downloader.download", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_disk_full_gives_clear_message_and_no_file_at_final_name(hub, blob, tmp_path):
    import resource

    def cap_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    p = run_cli(["download", SPEC, "--models-dir", str(tmp_path)], hub, preexec_fn=cap_file_size)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 4, err
    assert "disk full" in err and f"{len(blob) - 100_000} more bytes needed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) >= 1
    assert FILE not in only_files(tmp_path)
    assert (tmp_path / (FILE + ".part")).stat().st_size == 100_000  # kept for a resume


# -----------------------------------------------------------------------------
# row 35: unsafe names are refused before anything touches disk

@pytest.mark.parametrize("name", [
    "../evil.gguf", "a/../../evil.gguf", "/etc/passwd", "C:evil.gguf", "D:\\x.gguf", "\\\\server\\share\\x",
    "sub\\..\\x.gguf", "CON", "nul.gguf", "com1.bin", "LPT9.txt", "model.gguf.", "x ", "a//b.gguf", "./x",
    "~/x.gguf", "bad\x00name", "what?.gguf", "m.gguf.part", "", "x" * 300,
])
def test_unsafe_file_names_are_rejected_before_touching_disk(hub, tmp_path, name):
    folder = tmp_path / "models"
    with pytest.raises(dl.UsageError, match="refusing file name|unknown model"):
        dl.download(f"{REPO}/{name}", folder, policy=FAST)
    assert not folder.exists() and hub.log == []


@pytest.mark.parametrize("spec", ["../x/file.gguf", "own er/repo/file.gguf", "a/b/c.gguf@x"])
def test_bad_repo_ids_are_rejected(hub, tmp_path, spec):
    if spec.endswith("@x"):
        with pytest.raises(dl.UsageError, match="bad revision"):
            dl.download("a/b/c.gguf", tmp_path, revision="../../x")
    else:
        with pytest.raises(dl.UsageError, match="bad repository id"):
            dl.download(spec, tmp_path)
    assert hub.log == []


def test_good_names_pass(tmp_path):
    assert safe_filename("sub/dir/Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Llama-3.2-1B-Instruct-Q4_K_M.gguf"


def test_symlink_planted_in_the_folder_is_refused(hub, blob, tmp_path):
    target = tmp_path / "elsewhere"
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / (FILE + ".part")).symlink_to(target)
    with pytest.raises(DownloadError, match="symlink"):
        dl.download(SPEC, folder, policy=FAST)
    assert not target.exists()


# -----------------------------------------------------------------------------
# rows 36-37: two processes, a file in use

def test_two_processes_download_one_file_once(hub, blob, tmp_path):
    hub.faults.append({"kind": "slow", "parts": 20, "interval": 0.05})  # ~1 s body: they overlap
    procs = [run_cli(["download", SPEC, "--models-dir", str(tmp_path), "--json"], hub) for _ in range(2)]
    outs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(o) for o, _ in outs]
    assert {r["sha256"] for r in results} == {sha(blob)}
    assert sorted(r["already_present"] for r in results) == [False, True]
    assert len(hub.cdn_gets()) == 1
    assert (tmp_path / FILE).read_bytes() == blob


def test_file_in_use_on_windows_keeps_verified_part_and_finishes_next_run(hub, blob, tmp_path, monkeypatch):
    real_replace = os.replace

    def locked(src, dst):
        if str(src).endswith(".part"):
            raise PermissionError(13, "The process cannot access the file")
        return real_replace(src, dst)

    monkeypatch.setattr(fetch_mod.os, "replace", locked)
    monkeypatch.setattr(fetch_mod.time, "sleep", lambda s: None)
    with pytest.raises(DownloadError, match="is the model loaded"):
        dl.download(SPEC, tmp_path, policy=FAST)
    monkeypatch.setattr(fetch_mod.os, "replace", real_replace)
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert Path(r.path).read_bytes() == blob and len(hub.cdn_gets()) == 1  # no second transfer


# -----------------------------------------------------------------------------
# environment: gated repos, offline mode

def test_gated_repo_needs_hf_token(hub, blob, tmp_path, monkeypatch):
    hub.token = "hf_secret"
    with pytest.raises(DownloadError, match="gated or private.*HF_TOKEN"):
        dl.download(SPEC, tmp_path, policy=FAST)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert r.verified


def test_offline_mode_is_clear_and_uses_verified_local_copies(hub, blob, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE=1"):
        dl.download(SPEC, tmp_path, policy=FAST)
    assert hub.log == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    dl.download(SPEC, tmp_path, policy=FAST)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.log)
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert r.verified and r.already_present and len(hub.log) == n


# -----------------------------------------------------------------------------
# the CLI handlers, called through argparse

def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    dl.add_cli(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_download_json_and_exit_codes(hub, blob, tmp_path, capsys):
    assert cli(["download", SPEC, "--models-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: out[k] for k in ("sha256", "bytes", "resumed", "verified")} == \
        {"sha256": sha(blob), "bytes": len(blob), "resumed": False, "verified": True}
    assert out["path"] == str(tmp_path / FILE)
    assert cli(["download", "no-such-model", "--models-dir", str(tmp_path)]) == 2
    assert cli(["download", f"{REPO}/missing.gguf", "--models-dir", str(tmp_path)]) == 4
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and "not found (HTTP 404)" in err
    assert "Traceback" not in err


def test_cli_models_and_models_dir(hub, blob, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PERRO_PASTOR_MODELS", str(tmp_path))
    assert cli(["download", SPEC]) == 0
    (tmp_path / "partial.gguf.part").write_bytes(b"GGUF")
    capsys.readouterr()
    assert cli(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "stories15M" in out
    assert any(FILE in line and "gguf" in line and "verified" in line for line in out.splitlines())
    assert any("partial.gguf" in line and "partial" in line for line in out.splitlines())
    assert cli(["models", "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)["local"]} == {FILE, "partial.gguf"}
    assert cli(["models-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)


def test_ctrl_c_leaves_a_resumable_part_and_the_next_run_says_resuming(hub, blob, tmp_path):
    hub.faults.append({"kind": "slow", "parts": 200, "interval": 0.05})  # ~10 s body
    p = run_cli(["download", SPEC, "--models-dir", str(tmp_path)], hub)
    part = tmp_path / (FILE + ".part")
    deadline = time.monotonic() + 15
    while not (part.exists() and part.stat().st_size > 10_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=15)
    assert p.returncode == 130 and "run the same command again to resume" in err and "Traceback" not in err
    kept = part.stat().st_size
    assert 0 < kept < len(blob) and not (tmp_path / FILE).exists()
    p = run_cli(["download", SPEC, "--models-dir", str(tmp_path)], hub)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"resuming {FILE} from {kept} of {len(blob)} bytes" in out + err
    assert (tmp_path / FILE).read_bytes() == blob


def test_detect_type_reads_magic(tmp_path):
    cases = {"a.gguf": b"GGUF" + bytes(40), "b.bin": b"tjgg" + bytes(40),
             "c.bin": b"".join(v.to_bytes(4, "little") for v in (288, 768, 6, 6, 6, 32000, 256)) + bytes(8),
             "tokenizer.bin": bytes(40), "d.bin": bytes(40)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert [detect_type(tmp_path / n) for n in cases] == ["gguf", "ggml", "llama2c", "llama2c-tokenizer", "unknown"]


# -----------------------------------------------------------------------------
# no network: one line in seconds that says what was tried (issue 23)

def closed_port_url() -> str:
    """An endpoint on loopback where nothing listens: every connection is refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_hub_fails_in_seconds_and_states_the_retry_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"connection refused; gave up after 3 tries .*0\.5 s then 1 s apart"):
        dl.download(SPEC, tmp_path)  # the default policy, as a user gets it
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / (FILE + ".part")).exists()


def test_unreachable_hub_cli_json_is_one_object_with_error(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": closed_port_url()}
    env.pop("HF_HUB_OFFLINE", None)
    t0 = time.monotonic()
    for json_flag in (["--json"], []):
        out = subprocess.run([sys.executable, "-m", "perro_pastor.cli", "download", SPEC, "--models-dir",
                              str(tmp_path), *json_flag], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 4 and "Traceback" not in out.stderr
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("perro-pastor: error: ")
        assert "connection refused" in out.stderr and "3 tries" in out.stderr
        if json_flag:
            [line] = out.stdout.splitlines()
            reply = json.loads(line)
            assert reply["name"] == SPEC and "connection refused" in reply["error"] and reply["exit_code"] == 4
        else:
            assert out.stdout == ""
    assert time.monotonic() - t0 < 15  # two runs, interpreter start included


def test_dns_failure_is_named_as_such():
    import requests
    import urllib3

    from perro_pastor.downloader.hub import unreachable_reason
    gai = OSError(-2, "Name or service not known")
    dns = urllib3.exceptions.NameResolutionError("hub.invalid", None, gai)
    err = requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/x", dns))
    assert unreachable_reason(err) == "cannot resolve hub.invalid (Name or service not known; no network?)"
    assert unreachable_reason(requests.exceptions.ReadTimeout("slow")) is None  # reached: full retries


def test_cli_json_error_for_a_bad_name(tmp_path, capsys):
    assert cli(["download", "no-such-model", "--models-dir", str(tmp_path), "--json"]) == 2
    captured = capsys.readouterr()
    reply = json.loads(captured.out)
    assert "unknown model 'no-such-model'" in reply["error"] and reply["exit_code"] == 2
    assert captured.err.startswith("perro-pastor: error: unknown model")


@pytest.mark.skipif(sys.platform == "win32", reason="Windows opens folders with os.startfile")
def test_models_dir_open_without_a_file_manager_is_one_clean_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no xdg-open (or open) to be found
    assert cli(["models-dir", "--models-dir", str(tmp_path / "m"), "--open"]) == 4
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "m")
    assert captured.err.count("\n") == 1 and "is not installed" in captured.err and "Errno" not in captured.err
    assert captured.err.startswith("perro-pastor: error: cannot open")
