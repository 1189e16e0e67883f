"""The analysis cache: results keyed by checkpoint content and settings, as small CSV files.

    <out_dir>/.cache/<analysis>/<key>.csv      one result (tidy rows of one checkpoint, or a pair)
    <out_dir>/.cache/hashes/<run>.json         sha256 of checkpoint files, memoised on (size, mtime)
    <out_dir>/.cache/locks/<name>.lock         OS locks: one process computes an entry at a time

The key hashes the analysis name, its version, the settings that change its numbers and the
sha256 of the checkpoint file(s) it reads, so a changed checkpoint, analyzer or setting misses
the cache and nothing stale is ever returned. Two processes analysing the same checkpoints
into the same folder do not compute the same entry twice: each takes the entry's lock
(``fcntl.flock``, released when its process dies, so a kill leaves no stale lock) and looks
again once it holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import pandas as pd

from landscape.analyzers.tidy import to_table, write_csv
from landscape.safe_paths import open_no_follow

__all__ = ["Cache", "cache_key"]


def cache_key(name: str, version: int, settings: dict, hashes: list[str]) -> str:
    """The key of one result: analysis, analyzer version, settings and checkpoint hashes."""
    blob = json.dumps({"analysis": name, "version": version, "settings": settings, "checkpoints": hashes},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class Cache:
    """Results under ``root`` (``<out_dir>/.cache``)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._memo: dict[str, dict] = {}

    # ------------------------------------------------------------------ file hashes
    def _index_path(self, folder: Path) -> Path:
        tag = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
        return self.root / "hashes" / f"{Path(folder).name}-{tag}.json"

    def _index(self, folder: Path) -> dict:
        path = self._index_path(folder)
        if str(path) not in self._memo:
            try:
                self._memo[str(path)] = json.loads(path.read_text())
            except (OSError, ValueError):
                self._memo[str(path)] = {}
        return self._memo[str(path)]

    def file_hash(self, path: Path) -> str:
        """sha256 of a file's bytes, memoised on (size, mtime) in the folder's index."""
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        index = self._index(path.parent)
        hit = index.get(path.name)
        if hit and hit[:2] == stamp:
            return hit[2]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        index[path.name] = stamp + [h.hexdigest()]
        index["_dirty"] = True
        return h.hexdigest()

    def save_index(self) -> None:
        """Write the memoised hashes (merged with what another process wrote meanwhile)."""
        for key, index in self._memo.items():
            if not index.pop("_dirty", False):
                continue
            path = Path(key)
            with self.lock(f"index-{path.stem}"):
                try:
                    on_disk = json.loads(path.read_text())
                except (OSError, ValueError):
                    on_disk = {}
                on_disk.update(index)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                try:
                    tmp.write_text(json.dumps(on_disk))
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ entries
    def _path(self, name: str, key: str) -> Path:
        return self.root / name / f"{key}.csv"

    def get(self, name: str, key: str) -> pd.DataFrame | None:
        """A cached result, or None (missing or unreadable: then it is recomputed)."""
        path = self._path(name, key)
        if not path.exists():
            return None
        try:
            return pd.read_csv(path, keep_default_na=True)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError):
            return None

    def put(self, name: str, key: str, rows) -> None:
        write_csv(to_table(rows), self._path(name, key))

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive OS lock ``<root>/locks/<name>.lock``; blocks while another process holds it."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_no_follow(path)  # never through a planted symlink
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
