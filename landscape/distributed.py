"""Several processes, one job: ``torch.distributed`` set up from ``torchrun``'s environment.

    landscape train RECIPE --nproc 2                    # relaunches itself through torchrun
    torchrun --nproc-per-node 2 -m landscape train RECIPE     # the same, launched by hand
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
             -m landscape analyze checkpoints/default/*-seed0      # several machines

Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment) :func:`init` creates the
process group: NCCL when the device is a GPU (each process on ``cuda:<LOCAL_RANK>``), gloo on
CPUs. Its timeout (``timeout=`` or ``$LANDSCAPE_DIST_TIMEOUT`` seconds, default 1800) bounds
how long a collective waits for a rank that failed or hangs, so that the others end with an
error instead of waiting for ever. A second, gloo, *control* group with a long timeout carries
the rank-0 coordination (:func:`on_main`: rank 0 trains the teacher or prepares a run folder
while the others wait, then every rank gets its result -- or its exception, raised on every
rank so each one stops with the same message).

The curvature engine needs none of this: it reduces over whatever default group is
initialized (see :mod:`landscape.curvature.reduction`). This module serves the command line,
the trainer (DistributedDataParallel) and the sweep of :mod:`landscape.analyzers.distributed`.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from landscape.errors import LandscapeError
from landscape.launch_guard import die_with_parent

__all__ = ["Context", "DistributedError", "launched", "init", "current", "is_main", "world_size", "rank",
           "shutdown", "on_main", "broadcast_object", "all_gather_objects", "agreed", "launch",
           "write_exit_code", "free_port", "ENV_TIMEOUT", "DEFAULT_TIMEOUT"]

ENV_TIMEOUT = "LANDSCAPE_DIST_TIMEOUT"
ENV_EXIT_DIR = "LANDSCAPE_EXIT_DIR"
DEFAULT_TIMEOUT = 1800.0          # seconds: torch's own default for a collective
CONTROL_TIMEOUT = 7 * 24 * 3600.0  # rank 0 may train a teacher for hours while the others wait


class DistributedError(LandscapeError, RuntimeError):
    """The ranks could not be set up or kept in step; the message says which rank and why."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node),
    the ``backend`` ("gloo", "nccl" or None for a single process) and its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


#: the process group :func:`init` joined (torch.distributed's own state is per process too): its
#: context, the control group, and whether we created it; nothing else steers behaviour here
_STATE: dict[str, Any] = {"context": Context(), "control": None, "owned": False}


def launched() -> bool:
    """True inside a process started by ``torchrun`` (it sets ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        raise DistributedError(f"${name}={value!r} is not an integer; launch with torchrun, which sets it") from None


def _timeout(timeout: float | None) -> datetime.timedelta:
    if timeout is None:
        raw = os.environ.get(ENV_TIMEOUT, "")
        try:
            timeout = float(raw) if raw else DEFAULT_TIMEOUT
        except ValueError:
            raise DistributedError(f"${ENV_TIMEOUT}={raw!r}: expected a number of seconds") from None
    if not timeout > 0:
        raise DistributedError(f"the process-group timeout must be a positive number of seconds, got {timeout!r}")
    return datetime.timedelta(seconds=float(timeout))


def init(backend: str | None = None, timeout: float | None = None, device: str | None = None) -> Context:
    """Initialise ``torch.distributed`` from torchrun's environment; return this process's :class:`Context`.

    Outside torchrun this is a single process (``world_size`` 1, no group). ``device``: "cpu",
    "cuda" (each process takes ``cuda:<LOCAL_RANK>``) or None (CUDA when available);
    ``backend``: default NCCL on CUDA, gloo on the CPU; ``timeout``: seconds a collective waits
    for the other ranks (default ``$LANDSCAPE_DIST_TIMEOUT`` or 1800). Calling it again returns
    the same context; a group the caller initialised itself is adopted as it is.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        ctx = _STATE["context"]
        if ctx.world_size == dist.get_world_size() and ctx.rank == dist.get_rank():
            return ctx
        return _adopt(dist.get_backend())
    if not launched():
        _STATE["context"] = Context(device=_device(device, 0))
        return _STATE["context"]
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; install a build with it to use --nproc")
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    dev = _device(device, local_rank)
    backend = backend or ("nccl" if dev.startswith("cuda") else "gloo")
    if backend == "nccl" and not dev.startswith("cuda"):
        raise DistributedError("backend 'nccl' needs GPUs: use --device cuda, or the gloo backend on CPUs")
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=_timeout(timeout))
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"rank {rank} of {world}: cannot join the process group ({exc}); check "
                               "MASTER_ADDR/MASTER_PORT (or --rdzv-endpoint) and that every node can reach it") from exc
    _STATE["owned"] = True
    return _adopt(backend, dev)


def _device(device: str | None, local_rank: int) -> str:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device) == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError("device 'cuda' requested but CUDA is not available; use --device cpu")
        return f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}"
    return str(device)


def _adopt(backend: str, device: str | None = None) -> Context:
    dist = torch.distributed
    rank, world = dist.get_rank(), dist.get_world_size()
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if backend == "nccl" else "cpu"
    ctx = Context(rank=rank, world_size=world, local_rank=_env_int("LOCAL_RANK", rank),
                  local_world_size=_env_int("LOCAL_WORLD_SIZE", world), backend=backend, device=device)
    # rank-0 coordination on a gloo group with a long timeout (a CPU object channel for NCCL jobs too)
    _STATE["control"] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=CONTROL_TIMEOUT))
    _STATE["context"] = ctx
    return ctx


def current() -> Context:
    """The context of the last :func:`init` (a single process before any)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and _STATE["context"].world_size != dist.get_world_size():
        return init()
    return _STATE["context"]


def world_size() -> int:
    return current().world_size


def rank() -> int:
    return current().rank


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes shared files and prints."""
    return current().rank == 0


def shutdown() -> None:
    """Destroy the process group if :func:`init` created it."""
    dist = torch.distributed
    if _STATE["owned"] and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _STATE.update(context=Context(), control=None, owned=False)


# ----------------------------------------------------------------------------- coordination


def agreed(exc: BaseException) -> bool:
    """True for an exception every rank raised together (rank 0 printed it; the others may stay silent)."""
    return bool(getattr(exc, "_landscape_agreed", False))


def _mark(exc: BaseException) -> BaseException:
    try:
        exc._landscape_agreed = True  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass
    return exc


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable data; the control group, long timeout)."""
    ctx = current()
    if not ctx.distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    try:
        torch.distributed.broadcast_object_list(box, src=src, group=_STATE["control"])
    except RuntimeError as exc:
        raise DistributedError(f"rank {ctx.rank} of {ctx.world_size}: rank {src} stopped before sharing its "
                               f"result (its own error is printed above); {_first_line(exc)}") from exc
    return box[0]


def all_gather_objects(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (the control group)."""
    ctx = current()
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    try:
        torch.distributed.all_gather_object(out, obj, group=_STATE["control"])
    except RuntimeError as exc:
        raise DistributedError(f"rank {ctx.rank} of {ctx.world_size}: another rank stopped before the "
                               f"gather (its own error is printed above); {_first_line(exc)}") from exc
    return out


def on_main(fn: Callable[..., Any], *args: Any, ctx: Context | None = None, **kwargs: Any) -> Any:
    """Run ``fn`` on rank 0 while the others wait; return its result on every rank.

    If it raises, every rank raises the same exception (marked :func:`agreed`), so that a bad
    input found by rank 0 (a locked run folder, a recipe clash) ends every rank with one message.
    ``ctx``: the ranks that take part (default :func:`current`). ``fn`` runs on rank 0 alone, so
    whatever it calls must not wait for the other ranks: code that coordinates through a context
    is handed a one-process ``Context()`` there, for which ``on_main`` simply calls ``fn``.
    """
    ctx = ctx or current()
    if not ctx.distributed:
        return fn(*args, **kwargs)
    payload: Any = None
    if ctx.is_main:
        try:
            payload = ("ok", fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to every rank, then raised here too
            broadcast_object(("error", _pickled(exc)))
            raise _mark(exc)
    payload = broadcast_object(payload)
    if payload[0] == "ok":
        return payload[1]
    raise _mark(_unpickled(payload[1]))


def _pickled(exc: BaseException) -> tuple[bytes | None, str]:
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001 - an exception that does not travel: send its message
        blob = None
    return blob, f"{type(exc).__name__}: {exc}"


def _unpickled(packed: tuple[bytes | None, str]) -> BaseException:
    blob, text = packed
    if blob is not None:
        return pickle.loads(blob)
    return DistributedError(f"rank 0 failed: {text}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ----------------------------------------------------------------------------- launching


def free_port() -> int:
    """A free TCP port on this machine (for a local process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``landscape ARGV`` as ``nproc`` processes on this machine through ``torchrun``.

    ``python -m torch.distributed.run --standalone --nproc-per-node N -m landscape ARGV``; each
    process writes its exit code to a shared folder, and the launcher returns 1 when any rank met
    a bug, else rank 0's (or the first non-zero one), so that the exit codes of the command line
    survive the relaunch.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise DistributedError(f"--nproc must be a positive integer, got {nproc!r}")
    with tempfile.TemporaryDirectory(prefix="landscape-exit-") as codes:
        env = dict(os.environ, **{ENV_EXIT_DIR: codes})
        env.setdefault("OMP_NUM_THREADS", "1")  # each process sets its own torch threads
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "landscape", *argv]
        proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)  # dies with the launcher
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # torchrun got the same Ctrl-C and stops its workers: let it
            try:
                proc.wait(timeout=60)
            except (KeyboardInterrupt, subprocess.TimeoutExpired):
                proc.terminate()
                proc.wait()
            return 130
        found = {}
        for path in Path(codes).glob("rank*"):
            try:
                found[int(path.name[4:])] = int(path.read_text().strip() or 1)
            except ValueError:
                continue
    if not found:
        return rc or 1
    if 1 in found.values():
        return 1  # a bug on any rank is reported as a bug (the other ranks only saw it fail)
    if found.get(0):
        return found[0]
    bad = [c for _, c in sorted(found.items()) if c]
    return bad[0] if bad else rc


def write_exit_code(code: int) -> None:
    """Leave this rank's exit code where :func:`launch` looks for it (nothing outside a relaunch)."""
    folder = os.environ.get(ENV_EXIT_DIR)
    if folder:
        try:
            (Path(folder) / f"rank{current().rank}").write_text(str(int(code)))
        except OSError:
            pass
