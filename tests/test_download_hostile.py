"""The model folder as an attacker or a careless user leaves it: planted symlinks at the temp
names, dangling symlinks, FIFOs, a lock held by another process, a `.part.json` with bad values.
All against the loopback hub (tests/hub_server.py); no real network."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from hub_server import hub  # noqa: F401 -- the fixture: a FakeHub on loopback
from perro_pastor.errors import DownloadError, ModelFormatError
from perro_pastor.downloader import download as dl
from perro_pastor.downloader.fetch import Policy
from perro_pastor.downloader.model_folder import FileLock

FAST = Policy(attempts=2, backoff=0.01, backoff_max=0.05, connect_timeout=2.0, read_timeout=0.5,
              stall_window=0.3, stall_min_bytes=4000)
REPO, FILE = "owner/npc-model", "npc.gguf"
SPEC = f"{REPO}/{FILE}"
posix_only = pytest.mark.skipif(os.name == "nt", reason="symlinks / FIFOs / flock")


@pytest.fixture
def blob(hub) -> bytes:
    data = b"GGUF" + os.urandom(64 * 1024 - 4)
    hub.put(REPO, FILE, data)
    return data


@posix_only
def test_symlinks_at_temp_names_never_redirect_a_write(hub, blob, tmp_path):
    folder, outside = tmp_path / "models", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    victims = []
    for aux in (".part.json", ".download.json"):
        victim = outside / f"victim{aux}"
        victim.write_text("precious")
        victims.append(victim)
        (folder / f"{FILE}{aux}.{os.getpid()}.tmp").symlink_to(victim)
        (folder / f".{FILE}{aux}.tmp").symlink_to(victim)
    [r] = dl.download(SPEC, folder, policy=FAST)
    assert Path(r.path).read_bytes() == blob
    assert [v.read_text() for v in victims] == ["precious", "precious"]
    assert not (folder / (FILE + ".download.json")).is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == sorted(v.name for v in victims)


@posix_only
def test_dangling_symlinks_do_not_break_models(tmp_path):
    (tmp_path / "gone.gguf").symlink_to(tmp_path / "nowhere.gguf")
    (tmp_path / "gone2.gguf.part").symlink_to(tmp_path / "nowhere.part")
    (tmp_path / "x.gguf.download.json").symlink_to(tmp_path / "nowhere.json")
    (tmp_path / "ok.gguf").write_bytes(b"GGUF" + bytes(60))
    rows = {r["name"]: r for r in dl.list_models(tmp_path)["local"]}
    assert rows["ok.gguf"]["type"] == "gguf"
    assert rows["gone.gguf"]["type"] == "broken" and rows["gone2.gguf.part"]["type"] == "broken"
    assert "x.gguf.download.json" not in rows
    assert dl.cmd_models(_ns(models_dir=str(tmp_path), json=False)) == 0


@posix_only
def test_fifos_in_the_folder_are_skipped_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.gguf")
    (tmp_path / "real.gguf").write_bytes(b"GGUF" + bytes(60))
    os.mkfifo(tmp_path / "real.gguf.download.json")  # read_json must not block on it
    os.mkfifo(tmp_path / "half.gguf.part")
    info = _in_thread(lambda: dl.list_models(tmp_path))
    names = {r["name"] for r in info["local"]}
    assert "real.gguf" in names and "pipe.gguf" not in names and "half.gguf" not in names


@posix_only
def test_a_fifo_given_as_a_model_is_refused_at_once(tmp_path, monkeypatch):
    from perro_pastor.formats import open_model_file
    from perro_pastor.paths import resolve_model

    fifo = tmp_path / "npc.gguf"
    os.mkfifo(fifo)
    monkeypatch.setenv("PERRO_PASTOR_MODELS", str(tmp_path))
    for call in (lambda: resolve_model(str(fifo)), lambda: resolve_model("npc.gguf"),
                 lambda: open_model_file(fifo)):
        err = _in_thread(lambda: _raises(call))
        assert isinstance(err, ModelFormatError) and "not a regular file" in str(err)
        assert "\n" not in str(err)


@posix_only
def test_waiting_on_a_lock_is_said_at_once_and_bounded(hub, blob, tmp_path):
    events = []
    with FileLock(tmp_path / (FILE + ".lock")):  # "another process" (flock is per open file)
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match=r"gave up after 0.3 s waiting for another process"):
            dl.download(SPEC, tmp_path, policy=Policy(attempts=1, lock_timeout=0.3),
                        progress=events.append)
        assert time.monotonic() - t0 < 5
    waits = [e for e in events if e.state == "waiting-lock" and e.message]
    assert len(waits) == 1 and "another process" in waits[0].message and "0.3 s" in waits[0].message
    [r] = dl.download(SPEC, tmp_path, policy=FAST, progress=events.append)  # lock free: no wait
    assert Path(r.path).read_bytes() == blob and len([e for e in events if e.message and
                                                      e.state == "waiting-lock"]) == 1


@pytest.mark.parametrize("bad", [{"cdn_etag": 5}, {"cdn_etag": "a\r\nX-Evil: 1"}, {"size": "12"},
                                 {"cdn_etag": ["x"]}, {"repo": None}])
def test_a_bad_value_in_part_json_restarts_the_download_once(hub, blob, tmp_path, bad):
    part, meta = tmp_path / (FILE + ".part"), tmp_path / (FILE + ".part.json")
    hub.faults.append({"kind": "cut", "n": 1000})  # a run that dies mid-body leaves .part + .part.json
    with pytest.raises(DownloadError, match="kept in"):
        dl.download(SPEC, tmp_path, policy=Policy(attempts=1, read_timeout=2.0))
    assert part.stat().st_size == 1000
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **bad}))
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert Path(r.path).read_bytes() == blob and not r.resumed
    warnings = [n for n in r.notes if "bad value" in n]
    assert len(warnings) == 1 and FILE + ".part.json" in warnings[0], r.notes
    assert not meta.exists() and not part.exists()


# -----------------------------------------------------------------------------

def _ns(**kw):
    import argparse
    return argparse.Namespace(**kw)


def _raises(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - returned to the test
        return e
    return None


def _in_thread(call, timeout: float = 5.0):
    """Run ``call`` in a thread; a hang (a blocking open of a FIFO) fails the test, not the run."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", call()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung (blocked on a FIFO?)"
    return out["v"]


def test_a_huge_tree_listing_is_refused_without_reading_it_all(hub, blob, tmp_path, monkeypatch):
    from perro_pastor.downloader import hub as hub_api
    monkeypatch.setattr(hub_api, "MAX_TREE_LISTING_BYTES", 64 * 1024)
    hub.tree_padding = 2000  # ~150 KB of listing
    with pytest.raises(DownloadError, match="tree API sent more than 65,536 bytes"):
        dl.download(SPEC, tmp_path, policy=FAST)
    hub.tree_padding = 100  # a listing under the limit still finds the file among the others
    [r] = dl.download(SPEC, tmp_path, policy=FAST)
    assert Path(r.path).read_bytes() == blob
