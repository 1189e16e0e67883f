"""The errors landscape raises for bad inputs and bad files: each one line naming the thing
and the fix, so the CLI prints ``str(exc)`` and nothing else.

    LandscapeError            base class (catch this to catch them all)
      StorageError            an OSError on a run file: read-only folder, disk full, ...
      LockError               another process holds a run folder (or cache entry)
      UnsafePathError         a name or a planted link would write outside --out, or through a link

The older, more specific classes (``RecipeError``, ``CheckpointError``, ``TrainingError``,
``DataError``, ``LogError``) derive from :class:`LandscapeError` too, and also from the
builtin their callers already catch (ValueError, RuntimeError, FileNotFoundError).
"""

from __future__ import annotations

import errno
from pathlib import Path


class LandscapeError(Exception):
    """A problem the user can fix; the message names the file or key and the fix."""


class StorageError(LandscapeError, RuntimeError):
    """Reading or writing a run's files failed at the operating-system level."""


class LockError(LandscapeError, RuntimeError):
    """Another process is writing the same run folder (or cache entry)."""


class UnsafePathError(LandscapeError, ValueError):
    """A name that is not one safe path component, or a lock file planted as a link."""


_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def storage_error(exc: OSError, path: str | Path) -> StorageError:
    """Turn an OSError met while writing ``path`` into one :class:`StorageError` line.

    The file named is the one the OS complained about when it says so (``exc.filename``),
    else ``path``; the fix depends on the errno (read-only, full, or anything else).
    """
    where = exc.filename if getattr(exc, "filename", None) else path
    reason = exc.strerror or exc.__class__.__name__
    if exc.errno in _READ_ONLY:
        fix = ("the folder is read-only for this user: pass --out to a writable folder "
               "(or fix its permissions)")
    elif exc.errno in _FULL:
        fix = ("the disk is full: free some space or pass --out on another disk, then re-run; "
               "training resumes from the last complete epoch")
    else:
        fix = "check the folder and the disk, then re-run"
    return StorageError(f"cannot write {where} ({reason}); {fix}")
