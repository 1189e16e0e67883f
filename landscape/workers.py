"""Independent jobs of ``make figures`` in parallel processes, one fixed torch thread count each.

Training a run and analysing a run folder are independent of each other's processes, so the
pipeline runs them in a pool of ``jobs`` worker processes. Every worker sets
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

__all__ = ["default_jobs", "set_threads", "run_jobs", "teacher_job", "train_job", "analyze_job"]


def default_jobs() -> int:
    """Worker processes: the cores this process may use (at least 1)."""
    from landscape.launch_guard import usable_cores

    return usable_cores()


def set_threads(threads: int) -> None:
    """Fix torch's intra-op thread count for this process (the numbers depend on it)."""
    import torch

    torch.set_num_threads(int(threads))


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
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


def _describe(result: Any) -> str:
    if isinstance(result, (list, tuple)):
        return ", ".join(str(Path(r).name) if isinstance(r, (str, Path)) else str(r) for r in result)
    return str(result)


# ----------------------------------------------------------------------------- the jobs


def teacher_job(recipe: dict, seed: int, out: str, data_root, device) -> str:
    """Train (or find cached) the teacher of one seed; returns its file."""
    from landscape.data import load_dataset
    from landscape.zsq.teacher import get_teacher

    d = recipe["data"]
    data = load_dataset(d["name"], data_root or d["root"] or None, d["test_fraction"], d["split_seed"])
    path, _ = get_teacher(recipe, data, Path(out), seed, device or "cpu", progress=False)
    return str(path)


def train_job(recipe: dict, run: str, seed: int, out: str, data_root, device) -> str:
    """Train (or resume, or reuse) one run of one seed; returns its run folder."""
    from landscape.zsq.runs import train_recipe

    (run_dir,) = train_recipe(recipe, runs=[run], out=out, seed=seed, data_root=data_root, device=device,
                              progress=False)
    return str(run_dir)


def analyze_job(run_dir: str, settings: dict, tables_dir: str, device, force: bool) -> tuple[str, int]:
    """Analyse one run folder into the shared cache of ``tables_dir``; the tables it writes are
    rewritten afterwards by one gathering call over all run folders, which reads the cache.
    Returns the folder's name and how many results were computed (not read from the cache)."""
    import warnings

    from landscape.analyzers import AnalysisWarning, analyze_runs, run_identity
    from landscape.analyzers.settings import ANALYSES

    run = run_identity(run_dir)["run"]
    mine = [n for n in ANALYSES if settings.get(n, {}).get("runs") is None or run in settings[n]["runs"]]
    if not mine:
        return f"{Path(run_dir).name}: nothing to analyse", 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)  # the gathering call reports problems once
        try:
            tables = analyze_runs([run_dir], analyses=mine, force=force, settings=settings, out_dir=tables_dir,
                                  device=device, progress="lines")
        except Exception as exc:  # noqa: BLE001 - reported again, with context, by the gathering call
            return f"{Path(run_dir).name}: {type(exc).__name__}: {exc}", 0
    return Path(run_dir).name, tables.computed
