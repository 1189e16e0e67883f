"""Independent jobs in parallel processes, one fixed torch thread count each.

Training a run and analysing a run folder are independent of each other's processes, so
``make figures`` runs them in a pool of ``jobs`` worker processes (the jobs are the pipeline's,
:func:`landscape.pipeline.teacher_job` and :func:`~landscape.pipeline.train_job`; the analysis
shares its run folders out through :mod:`landscape.analyzers.sharing`). This module knows
nothing of what the jobs do: it is on the bottom floor, below everything that uses it. Every worker sets
``torch.set_num_threads(threads)`` before any work: the thread count comes from the recipe, not
from the machine, so the same recipe and seed give the same numbers whatever the core count,
``OMP_NUM_THREADS`` or ``jobs``. Workers are started with ``spawn`` (a forked process inherits
torch's OpenMP pool, which can deadlock).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from landscape.errors import LandscapeError

__all__ = ["default_jobs", "set_threads", "run_jobs"]


def default_jobs() -> int:
    """Worker processes: the cores this process may use (at least 1)."""
    from landscape.launch_guard import usable_cores

    return usable_cores()


def set_threads(threads: int) -> None:
    """Fix torch's intra-op thread count for this process (the numbers depend on it)."""
    import torch

    torch.set_num_threads(int(threads))


class WorkerError(LandscapeError, RuntimeError):
    """A worker process of the pool died (killed, or out of memory): not a bug, and not the job's input."""


def run_jobs(fn: Callable, args: Iterable[tuple], jobs: int, threads: int, label: str) -> list[Any]:
    """``[fn(*a) for a in args]`` in ``jobs`` processes (in this process when ``jobs == 1``),
    results in the order of ``args``; each finished job prints one line (logs and CI see progress).
    The first failure cancels the jobs not yet started and is raised."""
    args = list(args)
    t0 = time.perf_counter()

    def done(i, result) -> None:
        print(f"  {label} {i + 1}/{len(args)} done after {time.perf_counter() - t0:.0f} s: {_describe(result)}",
              flush=True)

    if jobs <= 1 or len(args) <= 1:
        set_threads(threads)
        out = []
        for i, a in enumerate(args):
            out.append(fn(*a))
            done(i, out[-1])
        return out
    ctx = mp.get_context("spawn")
    results: list[Any] = [None] * len(args)
    with cf.ProcessPoolExecutor(max_workers=min(jobs, len(args)), mp_context=ctx, initializer=set_threads,
                                initargs=(threads,)) as pool:
        futures = {pool.submit(fn, *a): i for i, a in enumerate(args)}
        try:
            for fut in cf.as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                done(i, results[i])
        except cf.process.BrokenProcessPool as exc:
            for f in futures:
                f.cancel()
            raise WorkerError(f"a {label} worker process died before it finished (killed from outside, or out "
                              f"of memory: {exc}); rerun with fewer --jobs (finished work is kept and reused)") from None
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


def _describe(result: Any) -> str:
    if isinstance(result, (list, tuple)):
        return ", ".join(str(Path(r).name) if isinstance(r, (str, Path)) else str(r) for r in result)
    return str(result)
