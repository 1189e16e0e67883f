"""The analysis of a sweep on several ranks (``landscape analyze RUN_DIR... --nproc N``, or torchrun).

Under ``torch.distributed``, :func:`~landscape.analyzers.analyze_runs` calls
:func:`analyze_distributed`, which every rank calls with the same arguments. Two ways to share
the work:

* ``mode="checkpoints"`` (default): the ranks are a :class:`Ranks` team of
  :func:`landscape.analyzers.sharing.analyze_shared` -- the one way work is shared among
  processes, the same as ``make figures``' process pool: the run folders are dealt out to the
  ranks, largest first (one cost model: checkpoints × the cost of the analyses that apply), and
  each rank analyses its share on its own -- every checkpoint once, on one rank, with this
  rank's batches only (``process_group=False``, no all-reduce) -- into the shared cache
  ``<out>/.cache`` (safe for concurrent writers: file locks). Then rank 0 alone makes one
  gathering pass over every run folder, which reads the cache and writes the tables; the
  numbers are those of one process, bit for bit.
* ``mode="data"``: every checkpoint in turn is analysed by all ranks together, each holding a
  block of its analysis batches; the curvature engine all-reduces every product, gradient and
  loss (:mod:`landscape.curvature.reduction`), so each rank holds the same numbers. Rank 0 reads
  and writes the cache and the tables; the others follow its cache decisions. For checkpoints
  whose analysis batches are many or large; each rank needs at least one batch.

Choose the mode with ``mode=``, or for the command line with ``$LANDSCAPE_ANALYZE_MODE``
(``checkpoints`` or ``data``). Both need the run folders (and ``<out>``) on a file system every
rank can read; the tables are written by rank 0, and every rank returns the same ``problems``
and ``computed`` (the tables themselves on rank 0), so every rank exits alike.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pandas as pd

from landscape import distributed
from landscape.analyzers._common import AnalysisError
from landscape.analyzers.cache import Cache
from landscape.analyzers.loading import CheckpointLoader
from landscape.analyzers.runner import AnalysisTables, AnalysisWarning, analyze_here
from landscape.analyzers.settings import resolve_settings
from landscape.analyzers.sharing import COST, analyze_shared, deal, fill_cache, share_out

__all__ = ["MODES", "ENV_MODE", "COST", "Ranks", "analyze_distributed", "share_out"]

MODES = ("checkpoints", "data")
ENV_MODE = "LANDSCAPE_ANALYZE_MODE"


@dataclass(frozen=True)
class Ranks:
    """The ranks of a process group as a :class:`~landscape.analyzers.sharing.Team`: a fixed share
    per rank (:func:`~landscape.analyzers.sharing.deal`, the same on every rank); rank 0 is the
    main one."""

    ctx: distributed.Context

    @property
    def size(self) -> int:
        return self.ctx.world_size

    def fill(self, ordered, kw: dict, progress) -> int:
        mine = deal(ordered, self.size)[self.ctx.rank]
        _, computed = fill_cache(mine, kw, progress if self.ctx.is_main else False)
        return sum(distributed.all_gather_objects(computed))

    def on_main(self, fn: Callable[[], AnalysisTables]) -> AnalysisTables:
        full: list[AnalysisTables] = []

        def run():
            full.append(fn())
            return full[0].problems, full[0].computed

        problems, computed = distributed.on_main(run, ctx=self.ctx)
        return full[0] if full else AnalysisTables(problems=problems, computed=computed)


def _device(device: Any, ctx: distributed.Context) -> Any:
    """Each rank's own GPU when the device is CUDA (or left to the default: the context's device)."""
    if device is None or (ctx.device.startswith("cuda") and str(device) == "cuda"):
        return ctx.device
    return device


def analyze_distributed(run_dirs, analyses=None, force: bool = False, settings: Mapping | None = None,
                        out_dir="figures/tables", device=None, *, threads: int | None = None,
                        progress: bool | str | None = None, mode: str | None = None,
                        ctx: distributed.Context | None = None) -> AnalysisTables:
    """:func:`~landscape.analyzers.analyze_runs` shared by every rank of the process group ``ctx``
    (default: :func:`landscape.distributed.current`; see the module docstring); every rank calls
    it with the same arguments."""
    ctx = ctx or distributed.current()
    mode = mode or os.environ.get(ENV_MODE) or "checkpoints"
    if mode not in MODES:
        raise AnalysisError(f"analysis mode {mode!r} (${ENV_MODE} or mode=): choose 'checkpoints' (each "
                            "checkpoint on one rank) or 'data' (each checkpoint on every rank, batches shared out)")
    # bad run folders are refused by analyze_here itself, on every rank alike (or by rank 0's gathering pass)
    run_dirs = [Path(r) for r in ([run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else run_dirs)]
    kw = dict(analyses=analyses, settings=settings, device=_device(device, ctx), threads=threads)
    if mode == "checkpoints":
        return analyze_shared(run_dirs, Ranks(ctx), force=force, out_dir=out_dir, progress=progress, **kw)
    return _by_data(run_dirs, force, Path(out_dir), progress, ctx, kw)


# ----------------------------------------------------------------------------- data-parallel


class _SharedCache(Cache):
    """The cache as rank 0 sees it, on every rank: rank 0 reads and writes it and takes its locks;
    every lookup's answer is broadcast, so that all ranks compute the same entries together."""

    def __init__(self, root: Path, ctx: distributed.Context):
        super().__init__(root)
        self.ctx = ctx

    def get(self, name: str, key: str) -> pd.DataFrame | None:
        return distributed.broadcast_object(super().get(name, key) if self.ctx.is_main else None)

    def put(self, name: str, key: str, rows) -> None:
        if self.ctx.is_main:
            super().put(name, key, rows)

    def save_index(self) -> None:
        if self.ctx.is_main:
            super().save_index()

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        if not self.ctx.is_main:  # a second rank waiting on rank 0's lock would stall rank 0's all-reduces
            yield
            return
        with super().lock(name):
            yield


class _ShardLoader:
    """Checkpoints loaded whole, then each rank keeps its block of the analysis batches."""

    def __init__(self, inner: CheckpointLoader, ctx: distributed.Context):
        self.inner, self.ctx = inner, ctx

    def load(self, path: Path, meta: dict, identity: str, need_kl: bool = True):
        point = self.inner.load(path, meta, identity, need_kl=need_kl)
        n, world = len(point.batches), self.ctx.world_size
        if n < world:
            raise AnalysisError(f"{n} analysis batch(es) for {world} ranks: with mode 'data' every rank needs "
                                "at least one; use fewer processes, a larger [analysis] max_batches, or mode "
                                "'checkpoints'")
        lo, hi = self.ctx.rank * n // world, (self.ctx.rank + 1) * n // world
        point.batches = point.batches[lo:hi]
        return point


def _by_data(run_dirs, force, out_dir, progress, ctx, kw) -> AnalysisTables:
    cfg = resolve_settings(kw["settings"])
    cache = _SharedCache(out_dir / ".cache", ctx)
    loader = _ShardLoader(CheckpointLoader(kw["device"], cfg["max_batches"]), ctx)
    with contextlib.ExitStack() as stack:
        # rank 0 writes the tables; the others write theirs where nobody looks
        target = out_dir if ctx.is_main else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if not ctx.is_main:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", AnalysisWarning)
        tables = analyze_here(run_dirs, force=force, out_dir=target, progress=progress if ctx.is_main else False,
                              cache=cache, loader=loader, **kw)
    if not ctx.is_main:
        tables = AnalysisTables(problems=tables.problems, computed=tables.computed)
    return tables
