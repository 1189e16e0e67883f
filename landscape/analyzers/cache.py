"""The analysis cache: results keyed by checkpoint content and settings, as small CSV files.

    <out_dir>/.cache/<analysis>/<key>.csv      one result (tidy rows of one checkpoint, or a pair), sealed
    <out_dir>/.cache/hashes/<run>.json         sha256 of checkpoint files, memoised on the file's
                                               (size, mtime, ctime, inode), each record sealed
    <out_dir>/.cache/locks/<name>.lock         OS locks: one process computes an entry at a time

The key hashes the analysis name, its version, the settings that change its numbers and the
sha256 of the checkpoint file(s) it reads, so a changed checkpoint, analyzer or setting misses
the cache and nothing stale is ever returned. Two processes analysing the same checkpoints
into the same folder do not compute the same entry twice: each takes the entry's lock
(``fcntl.flock``, released when its process dies, so a kill leaves no stale lock) and looks
again once it holds it.

Integrity, checked on every hit: an entry's first line is a seal,
``# landscape-cache 1 <analysis> <key> sha256=<hash of analysis, key and the CSV below>``, so an
edited number, a truncated file or an entry copied under another key is seen; such an entry
is never used: :meth:`Cache.get` returns None (the result is recomputed) and records why in
:attr:`Cache.rejected` (the runner says it). A hash record is reused only while the file's size,
mtime, ctime and inode are those recorded (a write that keeps the mtime still changes the
ctime) and while the record's own seal holds (an edited record is rehashed). The runner also
checks that a hit's rows are of the epoch asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterator

import pandas as pd

from landscape.analyzers.tidy import to_table
from landscape.safe_paths import open_no_follow

__all__ = ["Cache", "cache_key", "SEAL"]

SEAL = "# landscape-cache 1"


def _seal(name: str, key: str, body: bytes) -> str:
    h = hashlib.sha256(f"{name}\0{key}\0".encode())
    h.update(body)
    return h.hexdigest()


def _record_seal(name: str, stamp: list, digest: str) -> str:
    return hashlib.sha256(json.dumps([name, stamp, digest]).encode()).hexdigest()[:16]


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace`` (a reader sees the old file or the new one); the temporary never stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
        self.rejected: list[str] = []  # entries found corrupt on a hit (recomputed), one line each

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
        """sha256 of a file's bytes, memoised on (size, mtime, ctime, inode) in the folder's index;
        a record whose own seal does not hold (edited) is ignored and the file hashed again."""
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        index = self._index(path.parent)
        hit = index.get(path.name)
        if (isinstance(hit, list) and len(hit) == 3 and hit[0] == stamp and isinstance(hit[1], str)
                and hit[2] == _record_seal(path.name, stamp, hit[1])):
            return hit[1]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        index[path.name] = [stamp, h.hexdigest(), _record_seal(path.name, stamp, h.hexdigest())]
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
                _replace(path, json.dumps(on_disk).encode())

    # ------------------------------------------------------------------ entries
    def _path(self, name: str, key: str) -> Path:
        return self.root / name / f"{key}.csv"

    def get(self, name: str, key: str) -> pd.DataFrame | None:
        """A cached result, or None: missing, or not what was sealed (an edited, truncated or
        misplaced entry, or one without a seal) -- then it is recomputed, and the reason is
        appended to :attr:`rejected`."""
        path = self._path(name, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self.reject(path, f"cannot be read ({exc.strerror})")
        head, sep, body = data.partition(b"\n")
        want = f"{SEAL} {name} {key} sha256=".encode()
        if not sep or not head.startswith(want):
            return self.reject(path, "has no seal for this analysis and key (written by an older "
                               "version, or copied from another entry)")
        if head[len(want):].decode("ascii", "replace") != _seal(name, key, body):
            return self.reject(path, "does not match its seal (edited or truncated)")
        try:
            return pd.read_csv(io.BytesIO(body), keep_default_na=True)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            return self.reject(path, f"cannot be parsed ({type(exc).__name__})")

    def reject(self, where: str | Path, why: str) -> None:
        """Record, once, that the entry ``where`` was not used because ``why`` (it is recomputed);
        the runner warns the lines of :attr:`rejected` once per sweep. Returns None (a miss)."""
        line = f"cache entry {where} {why}; recomputed"
        if line not in self.rejected:  # an entry is looked up again under its lock
            self.rejected.append(line)
        return None

    def put(self, name: str, key: str, rows) -> None:
        """Write one result, sealed (see the module docstring), atomically."""
        body = to_table(rows).to_csv(index=False).encode("utf-8")
        text = f"{SEAL} {name} {key} sha256={_seal(name, key, body)}\n".encode() + body
        _replace(self._path(name, key), text)

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
