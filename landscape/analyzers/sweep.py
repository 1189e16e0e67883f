"""Who analyses a sweep: the one place that chooses between one process, a pool and the ranks.

    analyze_runs(run_dirs, ...)               this process (runner.analyze_here)
    analyze_runs(run_dirs, ..., jobs=4)       a pool of 4 processes (sharing.analyze_shared, ProcessPool)
    under torch.distributed (torchrun, --nproc)  the ranks (distributed.analyze_distributed)

The choice is made here and only here, from the arguments and the process group this process
is in; the modules below it never call back up (:mod:`.runner` analyses in one process,
:mod:`.sharing` deals work out and gathers, :mod:`.distributed` is the ranks' side of both).
"""

from __future__ import annotations

from typing import Mapping

from landscape import distributed
from landscape.analyzers.distributed import analyze_distributed
from landscape.analyzers.runner import AnalysisTables, analyze_here
from landscape.analyzers.sharing import ProcessPool, analyze_shared

__all__ = ["analyze_runs"]


def analyze_runs(run_dirs, analyses=None, force: bool = False, settings: Mapping | None = None,
                 out_dir="figures/tables", device=None, *, threads: int | None = None,
                 progress: bool | str | None = None, jobs: int | None = None,
                 mode: str | None = None) -> AnalysisTables:
    """Run the chosen analyses over every checkpoint of each run folder.

    Parameters
    ----------
    run_dirs:  run folders (``checkpoints/<recipe>/<run>-seed<S>/``) or one folder.
    analyses:  names from :data:`landscape.analyzers.ANALYSES`; ``None`` = all.
    force:     recompute even when a cached result exists.
    settings:  a recipe's ``[analysis]`` table (see :mod:`landscape.analyzers.settings`).
    out_dir:   where ``<analysis>.csv`` tables (and the ``.cache`` folder) go.
    device:    ``"cpu"``, ``"cuda"``...; default CUDA when available.
    threads:   torch threads for this process (``torch.set_num_threads``); the same number gives
               the same tables on any machine. None leaves torch's setting alone.
    progress:  None = a bar on a terminal and one line per checkpoint elsewhere (a log, CI);
               ``"lines"`` = always lines; False = silent.
    jobs:      worker processes for one machine without ``torch.distributed`` (``make figures``'
               pool); None or 1: this process. Ignored on ranks, which share the work themselves.
    mode:      on ranks, ``"checkpoints"`` or ``"data"`` (see :mod:`landscape.analyzers.distributed`).

    Who computes never changes a number: each checkpoint's results are those of one process
    (shared out, each one is computed once, on one worker, then gathered from the cache).

    Returns :class:`AnalysisTables`: ``{analysis: DataFrame}`` (tidy; also written as
    ``<out_dir>/<analysis>.csv``) plus ``"training"`` (the runs' ``metrics.csv`` in long form,
    ``training.csv``), with ``.problems`` listing what was skipped and why (each also warned
    as an :class:`AnalysisWarning`).
    """
    kw = dict(analyses=analyses, force=force, settings=settings, out_dir=out_dir, device=device, threads=threads,
              progress=progress)
    ctx = distributed.current()
    if ctx.distributed:
        return analyze_distributed(run_dirs, mode=mode, ctx=ctx, **kw)
    if jobs is not None and jobs > 1:
        return analyze_shared(run_dirs, ProcessPool(int(jobs), threads), **kw)
    return analyze_here(run_dirs, **kw)
