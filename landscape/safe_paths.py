"""Paths a recipe or a planted file could steer: names that become folders, and files opened
without following links.

    safe_name("kd", "recipe r.toml: [runs.kd]")        # -> "kd"
    safe_name("../../x", "recipe r.toml: name")         # UnsafePathError
    inside(out, out / "default" / "kd-seed0")           # the path, resolved, or UnsafePathError
    fd = open_no_follow(run_dir / ".lock")              # O_NOFOLLOW, a regular file or refused

A recipe name and a run name each become one folder level under ``--out``
(``<out>/<recipe>/<run>-seed<S>/``), so each must be one safe path component: letters,
digits, ``-``, ``_`` and ``.``, not starting with a dot, at most 100 characters. Lock files
are opened with ``O_NOFOLLOW`` and must be regular files, so a lock planted as a symlink (an
unpacked archive, a shared folder) can never truncate the file it points to.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from landscape.errors import UnsafePathError, storage_error

__all__ = ["NAME_RE", "safe_name", "inside", "open_no_follow"]

#: one path component: letters, digits, -_. ; no leading dot (no "", ".", "..", hidden files)
NAME_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,99}$")


def safe_name(name: object, where: str) -> str:
    """``name`` if it is one safe path component, else :class:`UnsafePathError` naming
    ``where`` (file and key) and the rule."""
    if isinstance(name, str) and NAME_RE.match(name):
        return name
    raise UnsafePathError(f"{where} = {name!r} cannot be a folder name; use letters, digits, "
                          "'-', '_' and '.' only (not starting with '.', at most 100 characters)")


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, after checking it lies under ``root`` resolved (symlinks followed);
    :class:`UnsafePathError` when it does not (a name or a planted link points outside)."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise UnsafePathError(f"{path} resolves to {path_r}, outside the output folder {root_r}; "
                              "remove the link (or the name) that points there, or pass another --out")
    return path_r


def open_no_follow(path: str | Path, flags: int = os.O_RDWR | os.O_CREAT, mode: int = 0o644) -> int:
    """``os.open`` with ``O_NOFOLLOW``: a symlink at ``path`` is refused, never followed, and
    so is anything that is not a regular file (a fifo, a device, a folder). Returns the fd.

    :class:`UnsafePathError` for a link or a non-regular file (one line naming it and the fix);
    :class:`~landscape.errors.StorageError` for other OS errors (read-only, disk full).
    """
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise UnsafePathError(f"{path} is a symbolic link; landscape never writes through a "
                                  "link: delete it (the file it points to is untouched) and re-run") from None
        if os.path.isdir(path):
            raise UnsafePathError(f"{path} is a folder where landscape keeps a lock file; "
                                  "remove it and re-run") from None
        raise storage_error(exc, path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is not a regular file (a fifo, socket or device) where "
                              "landscape keeps a lock file; delete it and re-run")
    if st.st_nlink > 1:  # a hard link planted where the lock goes: truncating it would write another file
        os.close(fd)
        raise UnsafePathError(f"{path} is a hard link ({st.st_nlink} names for one file); landscape never "
                              "writes through a link: delete it (the other names keep the file) and re-run")
    return fd
