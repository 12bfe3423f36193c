"""The model picker's state: the catalog plus the files in the model folder, and a download
running on a worker thread (``download()`` blocks) whose progress events the frame loop reads.
"""

from __future__ import annotations

import threading
from pathlib import Path

from perro_pastor.downloader.download import download, list_models


class ModelPicker:
    def __init__(self, models_dir=None):
        self.models_dir = models_dir
        self.rows: list[dict] = []  # {"label", "name", "installed"}
        self.status = ""
        self.downloading: str | None = None
        self._thread: threading.Thread | None = None
        self._finished: str | None = None  # a name whose download just completed

    def refresh(self) -> None:
        """Re-read the catalog and the folder (a few file stats, no network)."""
        try:
            info = list_models(self.models_dir)
        except Exception as exc:  # an unreadable folder must not take the game down
            self.rows, self.status = [], f"cannot list models: {exc}"
            return
        rows, seen = [], set()
        for e in info["catalog"]:
            mark = "installed" if e["installed"] else "download"
            size = f"{e['bytes'] / 2**20:.0f} MiB" if e.get("bytes") else "?"
            first = e["files"][0] if e.get("files") else ""
            path = (first if e["name"] == "default"
                    else str(Path(info["models_dir"]) / first.split("@")[0].rsplit("/", 1)[-1]))
            rows.append({"label": f"{e['name']:<22} {size:>9}  [{mark}]", "cols": (e["name"], size, mark),
                         "name": e["name"],
                         "installed": e["installed"], "path": path})
            seen.add(e["name"])
        for f in info["local"]:
            if f["name"] not in seen:
                size = f"{f['bytes'] / 2**20:.0f} MiB"
                rows.append({"label": f"{f['name']:<22} {size:>9}  [{f.get('type', '?')}]",
                             "cols": (f["name"], size, f"local {f.get('type', '?')}"),
                             "name": f["name"], "installed": True,
                             "path": str(Path(info["models_dir"]) / f["name"])})
        self.rows = rows

    def labels(self) -> list[str]:
        return [r["label"] for r in self.rows]

    def columns(self) -> list[tuple[str, str, str]]:
        """(name, size, state) per row: the panel draws each in a column of its own."""
        return [r["cols"] for r in self.rows]

    def choose(self, index: int) -> str | None:
        """Enter on a row: the name to load if installed, else start its download (None)."""
        row = self.rows[index]
        if row["installed"]:
            return "default" if row["name"] == "default" else row["path"]
        if self.downloading:
            self.status = f"already downloading {self.downloading}"
            return None
        self.downloading, self.status = row["name"], f"downloading {row['name']}..."
        self._thread = threading.Thread(target=self._download, args=(row["name"],), daemon=True)
        self._thread.start()
        return None

    def _download(self, name: str) -> None:
        def progress(p):
            total = f"/{p.total / 2**20:.1f}" if p.total else ""
            if p.done or p.total:
                self.status = f"{name}: {p.state} {p.done / 2**20:.1f}{total} MiB"
            else:  # nothing known yet (e.g. still connecting): no "0.0 MiB"
                self.status = f"{name}: {p.state}..."
        try:
            download(name, self.models_dir, progress=progress)
            self.status = f"{name}: downloaded, press Enter to load it"
        except Exception as exc:
            self.status = f"{name}: {exc}"
        self._finished, self.downloading = name, None

    def poll(self) -> bool:
        """True once after a download finished (the game then refreshes the list)."""
        finished, self._finished = self._finished, None
        if finished:
            self.refresh()
        return finished is not None
