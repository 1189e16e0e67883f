"""The analysis of a sweep on several ranks (``landscape analyze RUN_DIR... --nproc N``, or torchrun).

Under ``torch.distributed``, :func:`~landscape.analyzers.analyze_runs` hands over to
:func:`analyze_distributed`, which every rank calls with the same arguments. Two ways to share
the work:

* ``mode="checkpoints"`` (default): the run folders are dealt out to the ranks, largest first
  (checkpoints × the cost of the analyses that apply to them), and each rank analyses its share
  on its own -- every checkpoint once, on one rank, with this rank's batches only (no
  all-reduce) -- into the shared cache ``<out>/.cache`` (safe for concurrent writers: file
  locks). Then rank 0 alone makes one gathering pass over every run folder, which reads the
  cache and writes the tables; the numbers are those of one process, bit for bit.
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
import contextvars
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from landscape import distributed
from landscape.analyzers._common import AnalysisError
from landscape.analyzers.cache import Cache
from landscape.analyzers.discovery import checkpoints_of, run_identity
from landscape.analyzers.loading import CheckpointLoader
from landscape.analyzers.runner import AnalysisTables, AnalysisWarning, analyze_runs
from landscape.analyzers.settings import check_analyses, resolve_settings
from landscape.curvature import default_process_group

__all__ = ["MODES", "ENV_MODE", "analyze_distributed", "takes_over", "share_out"]

MODES = ("checkpoints", "data")
ENV_MODE = "LANDSCAPE_ANALYZE_MODE"
#: rough relative cost of one checkpoint for each analysis (to deal out run folders evenly)
COST = {"cosine": 1.0, "trace": 2.0, "eigen": 3.0, "density": 3.0, "interepoch": 1.0, "crossings": 0.1}

_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("landscape_analyze_inside", default=False)


def takes_over() -> bool:
    """True when ``analyze_runs`` runs on several ranks and must hand over to this module."""
    return not _INSIDE.get() and distributed.world_size() > 1


@contextlib.contextmanager
def _inside() -> Iterator[None]:
    token = _INSIDE.set(True)
    try:
        yield
    finally:
        _INSIDE.reset(token)


def share_out(run_dirs: list[Path], cfg: dict, names: list[str], world: int) -> list[list[Path]]:
    """Run folders dealt to ``world`` ranks, most expensive first to the least loaded rank
    (cost: checkpoints × the cost of the analyses that apply to the run); the same on every rank."""
    costs = []
    for i, d in enumerate(run_dirs):
        try:
            run = run_identity(d)["run"]
            n = len(checkpoints_of(d))
        except Exception:  # noqa: BLE001 - an unreadable folder costs little; the gather reports it
            run, n = None, 1
        per = sum(COST[a] for a in names if cfg[a]["runs"] is None or run in cfg[a]["runs"])
        costs.append((-(max(n, 1) * per), i))
    shares: list[list[Path]] = [[] for _ in range(world)]
    load = [0.0] * world
    for cost, i in sorted(costs):
        r = min(range(world), key=lambda k: (load[k], k))
        shares[r].append(run_dirs[i])
        load[r] -= cost
    return shares


def _device(device: Any, ctx: distributed.Context) -> Any:
    """Each rank's own GPU when the device is CUDA (or left to the default: the context's device)."""
    if device is None or (ctx.device.startswith("cuda") and str(device) == "cuda"):
        return ctx.device
    return device


def analyze_distributed(run_dirs, analyses=None, force: bool = False, settings: Mapping | None = None,
                        out_dir="figures/tables", device=None, *, threads: int | None = None,
                        progress: bool | str | None = None, mode: str | None = None) -> AnalysisTables:
    """:func:`~landscape.analyzers.analyze_runs` shared by every rank of the process group (see the
    module docstring); every rank calls it with the same arguments."""
    ctx = distributed.current()
    mode = mode or os.environ.get(ENV_MODE) or "checkpoints"
    if mode not in MODES:
        raise AnalysisError(f"analysis mode {mode!r} (${ENV_MODE} or mode=): choose 'checkpoints' (each "
                            "checkpoint on one rank) or 'data' (each checkpoint on every rank, batches shared out)")
    names = check_analyses(analyses)
    cfg = resolve_settings(settings)
    # bad run folders are refused by analyze_runs itself, on every rank alike (or by rank 0's gathering pass)
    run_dirs = [Path(r) for r in ([run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else run_dirs)]
    device = _device(device, ctx)
    kw = dict(analyses=analyses, settings=settings, device=device, threads=threads)
    if mode == "checkpoints":
        return _by_checkpoints(run_dirs, names, cfg, force, Path(out_dir), progress, ctx, kw)
    return _by_data(run_dirs, force, Path(out_dir), progress, ctx, kw)


def _by_checkpoints(run_dirs, names, cfg, force, out_dir, progress, ctx, kw) -> AnalysisTables:
    mine = share_out(run_dirs, cfg, names, ctx.world_size)[ctx.rank]
    computed = 0
    if mine:
        with _inside(), default_process_group(False), warnings.catch_warnings():
            warnings.simplefilter("ignore", AnalysisWarning)  # the gathering pass reports problems once
            try:
                computed = analyze_runs(mine, force=force, out_dir=out_dir,
                                        progress=progress if ctx.is_main else False, **kw).computed
            except Exception:  # noqa: BLE001 - reported again, with context, by the gathering pass
                pass
    counts = distributed.all_gather_objects(computed)  # also: every share is in the cache now

    def gather() -> AnalysisTables:
        with _inside(), default_process_group(False):
            return analyze_runs(run_dirs, force=False, out_dir=out_dir, progress=False, **kw)

    tables = _on_main(gather)
    tables.computed += sum(counts)
    return tables


def _on_main(fn) -> AnalysisTables:
    """``fn()`` on rank 0; every rank gets its problems and count (rank 0 also its tables)."""
    full: list[AnalysisTables] = []

    def run():
        full.append(fn())
        return full[0].problems, full[0].computed

    problems, computed = distributed.on_main(run)
    return full[0] if full else AnalysisTables(problems=problems, computed=computed)


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
        with _inside():
            tables = analyze_runs(run_dirs, force=force, out_dir=target, progress=progress if ctx.is_main else False,
                                  cache=cache, loader=loader, **kw)
    if not ctx.is_main:
        tables = AnalysisTables(problems=tables.problems, computed=tables.computed)
    return tables
