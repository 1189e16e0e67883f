"""One writer at a time: an OS file lock that dies with its process.

    with exclusive_lock(run_dir / ".lock", f"run folder {run_dir}"):
        ...   # only this process writes the folder

``flock(2)`` on the lock file: the kernel releases it when the process exits, however it
exits (kill -9 included), so a crash never leaves a stale lock behind. The lock file keeps
the pid of its last holder, which is how a second process can name the one in its way.
Locks are per open file, so two ``exclusive_lock`` on one path conflict even inside one
process.
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from landscape.errors import LockError, storage_error
from landscape.safe_paths import open_no_follow


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[Path]:
    """Hold an exclusive, non-blocking lock on ``path`` (created if absent) for the block.

    Raises :class:`~landscape.errors.LockError` at once if another holder has it:
    ``"<what> is in use by process <pid> (lock <path>); wait for it to finish or stop it"``,
    :class:`~landscape.errors.StorageError` if the lock file cannot be created
    (read-only folder, disk full), and :class:`~landscape.errors.UnsafePathError` if ``path``
    is a symbolic link or not a regular file (it is never followed, so the file a planted
    link points to is never truncated).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, path) from None
    fd = open_no_follow(path)  # a planted symlink is refused, never followed and truncated
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise storage_error(exc, path) from None
            raise LockError(f"{what} is in use by {_holder(path)} (lock {path}); wait for it to "
                            "finish or stop it, then retry") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            raise storage_error(exc, path) from None
        yield path
    finally:
        os.close(fd)  # releases the lock
