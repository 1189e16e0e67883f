"""The errors landscape raises for bad inputs and bad files: each one line naming the thing
and the fix, so the CLI prints ``str(exc)`` and nothing else.

    LandscapeError            base class (catch this to catch them all)
      StorageError            an OSError on a run file: read-only folder, disk full, ...
      LockError               another process holds a run folder (or cache entry)
      UnsafePathError         a name or a planted link would write outside --out, or through a link
      DeviceError             a --device torch does not know, or CUDA asked for where there is none
      UnknownNameError        a model, data set or kernel mode that is not one of the choices

Every error a user can cause derives from :class:`LandscapeError`, each defined beside the code
that raises it and named for what the user did: ``RecipeError`` (a recipe or flag),
``CheckpointError``, ``TrainingError``, ``DataError``, ``LogError``, ``ReportError``,
``AnalysisError``, ``ResourceError``, ``DistributedError``, ``SensitivityError``,
``CurvatureError`` (and ``ReductionError``), ``TableError`` (and ``FigureError``),
``QuantizerError``, ``FrozenRoundingError``, ``CallSiteError``, ``LossError`` (and
``LossTypeError``). Most also derive from the builtin their callers caught before (ValueError,
TypeError, RuntimeError, FileNotFoundError), so old ``except ValueError`` code keeps working;
the CLI relies on :class:`LandscapeError` alone.

Anything else that escapes is a bug in landscape, not a bad input: the CLI prints its traceback
and a line asking for a report (exit 1). ``landscape.quant.QuantizationError`` (the built-in
quantizer off its own grid) is such a bug, deliberately not a :class:`LandscapeError`.
tests/test_error_hierarchy.py walks the package and holds every exception class to this.
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


class UnknownNameError(LandscapeError, ValueError):
    """A name that is not one of the choices (a model, a data set, a kernel mode), from a recipe or a call."""


class UnsafePathError(LandscapeError, ValueError):
    """A name that is not one safe path component, or a lock file planted as a link."""


class DeviceError(LandscapeError, ValueError):
    """A device (``--device``, ``device=``) that torch does not know or this machine does not have."""


_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_MISSING = {errno.ENOENT, errno.ENOTDIR}


def storage_error(exc: OSError, path: str | Path | None) -> StorageError:
    """Turn an OSError met while reading or writing ``path`` into one :class:`StorageError` line.

    The file named is the one the OS complained about when it says so (``exc.filename``),
    else ``path`` (``None``: "a file"); the fix depends on the errno (read-only, full, missing,
    or anything else).
    """
    where = exc.filename if getattr(exc, "filename", None) else (path if path is not None else "a file")
    reason = exc.strerror or exc.__class__.__name__
    if exc.errno in _MISSING:
        return StorageError(f"cannot open {where} ({reason}); check the path (and that its folder exists), "
                            "then re-run")
    if exc.errno in _READ_ONLY:
        fix = ("the folder is read-only for this user: pass --out to a writable folder "
               "(or fix its permissions)")
    elif exc.errno in _FULL:
        fix = ("the disk is full: free some space or pass --out on another disk, then re-run; "
               "training resumes from the last complete epoch")
    else:
        fix = "check the folder and the disk, then re-run"
    return StorageError(f"cannot write {where} ({reason}); {fix}")
