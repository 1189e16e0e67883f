"""Processes a command starts: no more than the machine holds, and none outliving its launcher.

    check_nproc(8, oversubscribe=False)    # ResourceError if 8 > usable cores, or > the memory
    Popen(cmd, preexec_fn=die_with_parent)   # the child gets SIGTERM when its parent dies
    die_with_parent()                        # in a worker: the same, for the worker itself

``--nproc N`` starts N torch processes on this machine. More processes than usable cores
(``os.sched_getaffinity``) only slow each other down, and each costs about
:data:`WORKER_BYTES` of memory whatever it does (the torch runtime), so N above the cores, or
N × that above the memory available (``MemAvailable``, or the cgroup's ``memory.max`` less its
``memory.current`` when lower), is refused with one line unless ``--oversubscribe``.

A launcher killed outright (``kill -9``, an out-of-memory kill) cannot stop its children, so
each child asks the kernel to do it: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (Linux; elsewhere a
no-op). torchrun, started so by the launcher, stops its workers on SIGTERM; each worker also
sets it for itself, so it ends with torchrun however torchrun ends.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

from landscape.errors import LandscapeError

__all__ = ["ResourceError", "WORKER_BYTES", "usable_cores", "available_memory", "check_nproc",
           "die_with_parent"]

WORKER_BYTES = 512 << 20
"""Memory one torch worker process needs before it holds any data (the runtime, about 0.4 GiB)."""

_PR_SET_PDEATHSIG = 1


class ResourceError(LandscapeError, ValueError):
    """More processes than the machine's cores or memory hold; names the flag and the fix."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes a new process may still use: ``MemAvailable``, or the cgroup v2 limit left if lower
    (None when neither can be read)."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cg = Path("/sys/fs/cgroup")
    limit, used = _read_int(cg / "memory.max"), _read_int(cg / "memory.current")
    if limit is not None and used is not None:
        found.append(max(0, limit - used))
    return min(found) if found else None


def check_nproc(nproc: int, oversubscribe: bool = False) -> None:
    """Refuse ``--nproc nproc`` above the usable cores, or above the memory for that many
    workers (:class:`ResourceError`, one line naming the flag and the fix), unless
    ``oversubscribe``."""
    if oversubscribe or nproc <= 1:
        return
    cores = usable_cores()
    if nproc > cores:
        raise ResourceError(f"--nproc {nproc} starts more processes than the {cores} usable core(s) of this "
                            f"machine: they would only slow each other down; use --nproc {cores} or fewer, "
                            "or add --oversubscribe to start them anyway")
    free = available_memory()
    if free is not None and nproc * WORKER_BYTES > free:
        fits = max(1, free // WORKER_BYTES)
        raise ResourceError(f"--nproc {nproc} needs about {nproc * WORKER_BYTES / 2**30:.1f} GiB for its workers "
                            f"(~{WORKER_BYTES / 2**30:.1f} GiB each), but {free / 2**30:.1f} GiB are available; "
                            f"use --nproc {fits} or fewer, or add --oversubscribe to start them anyway")


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux
    ``PR_SET_PDEATHSIG``; a no-op elsewhere). Safe as a ``preexec_fn``. If the parent died
    while this was being set up, the signal is sent at once."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
