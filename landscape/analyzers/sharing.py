"""One way to share the analysis of many run folders among processes.

    deal run folders out (most expensive first) -> each worker fills the shared cache with its
    share -> one gathering pass on the main process reads the cache and writes the tables

:func:`analyze_shared` does this for every kind of worker: the processes of ``make figures``'
pool (:class:`ProcessPool`, ``landscape figures --jobs N``) and the ranks of
``torch.distributed`` (:class:`landscape.analyzers.distributed.Ranks`, ``landscape analyze
--nproc N`` or torchrun). Each worker analyses its folders as one process
(:func:`~landscape.analyzers.runner.analyze_here`, every checkpoint once, with its own batches:
``process_group=False``), into ``<out>/.cache``, which is safe for concurrent writers (a lock per
entry); then the main process analyses every folder again, which finds every result in the
cache, so the tables are those of one process, bit for bit. A worker's failure is not raised
where it happens: the gathering pass meets the same checkpoint and reports it once, with context.

One cost model deals the folders out (:func:`run_cost`): a run folder costs its checkpoints
times the summed :data:`COST` of the analyses that apply to its run,

    cost(run) = max(n_checkpoints, 1) · Σ_{a applies to run} COST[a],

and the folders go out largest first -- to the least loaded rank (:func:`share_out`, a fixed
share per rank, the same on every rank), or to whichever pool process is free next (the same
greedy rule, applied as the work finishes).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from landscape.analyzers.discovery import checkpoints_of, run_identity
from landscape.analyzers.runner import AnalysisTables, AnalysisWarning, analyze_here
from landscape.analyzers.settings import check_analyses, resolve_settings

__all__ = ["COST", "Team", "ProcessPool", "run_cost", "by_cost", "deal", "share_out", "fill_cache",
           "analyze_shared"]

#: rough relative cost of one checkpoint for each analysis (to deal out run folders evenly)
COST = {"cosine": 1.0, "trace": 2.0, "eigen": 3.0, "density": 3.0, "interepoch": 1.0, "crossings": 0.1}


def run_cost(run_dir: Path, cfg: Mapping, names: Sequence[str]) -> float:
    """``max(checkpoints, 1) × Σ COST[a]`` over the analyses ``a`` among ``names`` that apply to
    the folder's run; an unreadable folder costs one checkpoint (the gathering pass reports it)."""
    try:
        run = run_identity(run_dir)["run"]
        n = len(checkpoints_of(run_dir))
    except Exception:  # noqa: BLE001 - an unreadable folder costs little; the gather reports it
        run, n = None, 1
    return max(n, 1) * sum(COST[a] for a in names if cfg[a]["runs"] is None or run in cfg[a]["runs"])


def by_cost(run_dirs: Sequence[Path], cfg: Mapping, names: Sequence[str]) -> list[tuple[float, Path]]:
    """``(cost, folder)`` most expensive first; ties keep the given order."""
    costs = [(run_cost(d, cfg, names), i) for i, d in enumerate(run_dirs)]
    return [(c, run_dirs[i]) for c, i in sorted(costs, key=lambda t: (-t[0], t[1]))]


def deal(ordered: Sequence[tuple[float, Path]], world: int) -> list[list[Path]]:
    """``(cost, folder)`` pairs, most expensive first, dealt to ``world`` workers: each to the
    least loaded one so far (the lowest index on a tie)."""
    shares: list[list[Path]] = [[] for _ in range(world)]
    load = [0.0] * world
    for cost, d in ordered:
        r = min(range(world), key=lambda k: (load[k], k))
        shares[r].append(d)
        load[r] += cost
    return shares


def share_out(run_dirs: Sequence[Path], cfg: Mapping, names: Sequence[str], world: int) -> list[list[Path]]:
    """Run folders dealt to ``world`` workers by :func:`run_cost`, most expensive first to the
    least loaded one; the same on every rank."""
    return deal(by_cost(list(run_dirs), cfg, names), world)


def fill_cache(run_dirs: Sequence[str | Path], kw: dict, progress) -> tuple[str, int]:
    """One worker's share: analyse ``run_dirs`` as one process into the shared cache (``kw``: the
    arguments of :func:`~landscape.analyzers.runner.analyze_here`). Returns a line for the log
    and how many results were computed; problems and failures are left to the gathering pass."""
    if not run_dirs:
        return "nothing to analyse", 0
    label = ", ".join(Path(d).name for d in run_dirs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)  # the gathering pass reports problems once
        try:
            tables = analyze_here(list(run_dirs), progress=progress, process_group=False, **kw)
        except Exception as exc:  # noqa: BLE001 - reported again, with context, by the gathering pass
            return f"{label}: {type(exc).__name__}: {exc}", 0
    return label, tables.computed


class Team(Protocol):
    """The processes that share a sweep, seen from one of them."""

    #: how many workers take a share
    size: int

    def fill(self, ordered: list[tuple[float, Path]], kw: dict, progress) -> int:
        """Every worker runs :func:`fill_cache` on its folders (``ordered``: ``(cost, folder)``,
        most expensive first); returns the results computed by all of them, on every process."""

    def on_main(self, fn: Callable[[], AnalysisTables]) -> AnalysisTables:
        """``fn()`` on the main process; every process returns its problems and count (the main
        one also its tables)."""


@dataclass(frozen=True)
class ProcessPool:
    """``jobs`` spawned processes of ``threads`` torch threads each (:func:`landscape.workers.run_jobs`);
    this process is the main one. A folder goes to the first free process, most expensive first."""

    size: int
    threads: int | None = None

    def fill(self, ordered: list[tuple[float, Path]], kw: dict, progress) -> int:
        from landscape.workers import run_jobs

        threads = self.threads if self.threads is not None else _torch_threads()
        done = run_jobs(fill_cache, [([str(d)], kw, "lines" if progress is not False else False)
                                     for _, d in ordered], self.size, threads, "analysis")
        return sum(n for _, n in done)

    def on_main(self, fn: Callable[[], AnalysisTables]) -> AnalysisTables:
        return fn()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def analyze_shared(run_dirs, team: Team, analyses=None, force: bool = False, settings: Mapping | None = None,
                   out_dir="figures/tables", device=None, *, threads: int | None = None,
                   progress: bool | str | None = None) -> AnalysisTables:
    """:func:`~landscape.analyzers.analyze_runs` shared among ``team``'s workers (see the module
    docstring): deal out, fill the cache, gather once. Every worker of the team calls it with the
    same arguments (a process pool: only this process)."""
    names = check_analyses(analyses)
    cfg = resolve_settings(settings)
    run_dirs = [Path(r) for r in ([run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else run_dirs)]
    kw = dict(analyses=analyses, settings=settings, device=device, threads=threads, out_dir=out_dir, force=force)
    ordered = [(c, d) for c, d in by_cost(run_dirs, cfg, names) if c > 0]  # no analysis applies: nothing to fill
    computed = team.fill(ordered, kw, progress)  # also: every share is in the cache now
    gather = dict(kw, force=False)  # a forced share was recomputed already; the gathering pass reads it

    tables = team.on_main(lambda: analyze_here(run_dirs, progress=False, process_group=False, **gather))
    tables.computed += computed
    return tables
