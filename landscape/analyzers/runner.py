"""Run the analyses over run folders in one process: checkpoints in, tidy CSV tables out.

This is the sweep of one process and nothing else: :func:`landscape.analyzers.analyze_runs`
(:mod:`.sweep`) chooses who runs it -- this process alone, a pool of processes or the ranks of
``torch.distributed``, which share the run folders out through :mod:`.sharing` and call
:func:`analyze_here` on their share; it never calls back up.

For each run folder the runner plans which (analysis, epoch) results it needs, takes what the
cache (:mod:`.cache`) already holds, and computes the rest epoch by epoch: it rebuilds the
point of a checkpoint once (:mod:`.loading`) and hands it to every analysis that needs it,
keeping for the pairwise analyses (``interepoch``, ``crossings``) the state of the previous
epoch only. While it computes an epoch it holds that entry's lock, so a second process
analysing the same checkpoints into the same folder waits and then reads the cache.

Nothing is lost in silence: a checkpoint that cannot be read, an analysis that fails on one
checkpoint, a loss that cannot be evaluated (its teacher file is gone), a missing epoch or a
table with no rows is a :class:`Problem` naming the file and the reason; the sweep goes on
with the others, the problems are warned about and returned (``tables.problems``), and the
command line exits with code 3 unless ``--keep-going``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd
from tqdm.auto import tqdm

from landscape.analyzers import cosine, crossings, density, eigen, interepoch, trace
from landscape.analyzers._common import AnalysisError, select_epochs
from landscape.analyzers.cache import Cache, cache_key
from landscape.analyzers.discovery import checkpoints_of, expected_epochs, run_identity, training_rows
from landscape.analyzers.loading import CheckpointLoader
from landscape.analyzers.settings import cache_settings, check_analyses, resolve_settings
from landscape.analyzers.tidy import to_table, write_csv
from landscape.checkpoints import check_placement
from landscape.errors import LandscapeError

__all__ = ["MODULES", "AnalysisWarning", "Problem", "AnalysisTables", "analyze_here", "needed_losses"]

MODULES = {m.NAME: m for m in (cosine, trace, eigen, density, interepoch, crossings)}


def _bad_input() -> tuple[type[BaseException], ...]:
    """What one checkpoint's analysis may fail with and the sweep lists as a problem and goes on:
    a bad input (a :class:`LandscapeError`, a file error) or no memory left for it. Anything else
    is a bug in landscape, raised as one."""
    import torch

    return (LandscapeError, OSError, MemoryError, torch.OutOfMemoryError)


class AnalysisWarning(UserWarning):
    """A checkpoint or run was skipped; the analysis went on without it."""


@dataclass(frozen=True)
class Problem:
    """Something that was not analysed, and why."""

    where: str  # the checkpoint, log or run folder
    what: str  # the analysis (or "load", "log", "epochs")
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}: {self.why}"


class AnalysisTables(dict):
    """``{analysis: DataFrame}`` plus ``problems`` (everything that could not be analysed) and
    ``computed`` (how many results were computed rather than read from the cache)."""

    problems: list[Problem]
    computed: int

    def __init__(self, *args, problems=None, computed: int = 0, **kw):
        super().__init__(*args, **kw)
        self.problems = list(problems or [])
        self.computed = computed


def needed_losses(name: str, cfg: dict) -> list[str]:
    """The losses analysis ``name`` evaluates (the teacher is loaded only when one is ``kl``)."""
    if name in ("cosine", "trace", "eigen", "density"):
        return list(cfg["losses"])
    if name == "interepoch" and cfg["interepoch"]["fixed_batches"]:
        return [cfg["interepoch"]["loss"]]
    return []


def _default_device(device):
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _restamp(df: pd.DataFrame, meta: dict) -> pd.DataFrame:
    df = df.copy()
    for k in ("run", "seed", "epoch"):
        df[k] = meta[k]
    return df


class _Progress:
    """A tqdm bar on a terminal; elsewhere (a log, CI) one line per analysed checkpoint."""

    def __init__(self, label: str, total: int, mode):
        self.label, self.total, self.done = label, total, 0
        tty = sys.stderr.isatty()
        self.lines = mode == "lines" or (mode in (None, True) and not tty)
        self.bar = tqdm(total=total, desc=label, unit="ckpt", leave=False,
                        disable=mode in (False, "lines") or not tty or total == 0)

    def step(self, epoch, names, seconds: float) -> None:
        self.done += 1
        self.bar.update(1)
        if self.lines:
            print(f"  analyze {self.label} epoch {epoch} ({self.done}/{self.total}): "
                  f"{' '.join(names) or 'state only'} in {seconds:.1f} s", flush=True)

    def close(self) -> None:
        self.bar.close()


def analyze_here(run_dirs, analyses=None, force: bool = False, settings: Mapping | None = None,
                 out_dir="figures/tables", device=None, *, threads: int | None = None,
                 progress: bool | str | None = None, cache: Cache | None = None,
                 loader: CheckpointLoader | None = None, process_group=None) -> AnalysisTables:
    """Run the chosen analyses over every checkpoint of each run folder, in this process.

    ``run_dirs`` ... ``progress``: as :func:`landscape.analyzers.sweep.analyze_runs`, which chooses
    who computes and calls this for one process (or one share of a sweep).
    cache, loader: the results cache (default ``<out_dir>/.cache``) and the checkpoint loader (the
               data-parallel mode of :mod:`landscape.analyzers.distributed` passes its own).
    process_group: the points' (:class:`~landscape.analyzers._common.Point`) when the default
               loader builds them: False = this process's batches alone (a share of a sweep).

    Returns :class:`AnalysisTables`: ``{analysis: DataFrame}`` (tidy; also written as
    ``<out_dir>/<analysis>.csv``) plus ``"training"`` (the runs' ``metrics.csv`` in long form,
    ``training.csv``), with ``.problems`` listing what was skipped and why (each also warned
    as an :class:`AnalysisWarning`).
    """
    names = check_analyses(analyses)
    cfg = resolve_settings(settings)
    if threads is not None:
        import torch

        from landscape.config import TOP_FIELDS

        try:
            TOP_FIELDS["threads"].check(threads, "--threads")
        except LandscapeError as exc:
            raise AnalysisError(str(exc)) from None
        torch.set_num_threads(int(threads))
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise AnalysisError("no run folder given")
    for r in run_dirs:
        if not r.is_dir():
            raise AnalysisError(f"run folder {str(r)!r} does not exist (train it first: landscape train RECIPE)")
    out_dir = Path(out_dir)
    job = _Job(names, cfg, cache or Cache(out_dir / ".cache"),
               loader or CheckpointLoader(_default_device(device), cfg["max_batches"], process_group), force, progress)
    idents = [run_identity(r) for r in run_dirs]
    known = {i["run"] for i in idents}
    for n in names:
        for wanted in cfg[n]["runs"] or []:
            if wanted not in known:
                warnings.warn(f"[analysis.{n}] runs names {wanted!r}, which is not among the runs given "
                              f"({', '.join(sorted(known))})", AnalysisWarning, stacklevel=2)
    for run_dir, ident in zip(run_dirs, idents):
        job.run(run_dir, ident)
    job.cache.save_index()
    _say_rejected(job.cache)
    return job.finish(out_dir)


class _Job:
    """One call of :func:`analyze_here`: the tables gathered so far and the problems met."""

    def __init__(self, names, cfg, cache: Cache, loader: CheckpointLoader, force: bool, progress):
        from landscape.kernels import current

        self.kernels = current()  # part of every cache key
        self.names, self.cfg, self.cache, self.loader = names, cfg, cache, loader
        self.force, self.progress = force, progress
        self.tables: dict[str, list[pd.DataFrame]] = {n: [] for n in names}
        self.training: list[dict] = []
        self.problems: list[Problem] = []
        self.computed = 0

    def problem(self, where, what: str, why: str) -> None:
        p = Problem(str(where), what, why)
        self.problems.append(p)
        warnings.warn(str(p) + "; skipped", AnalysisWarning, stacklevel=4)

    def add(self, name: str, rows) -> None:
        df = to_table(rows)
        if not df.empty:
            self.tables[name].append(df)

    # ------------------------------------------------------------------ one run folder
    def run(self, run_dir: Path, ident: dict) -> None:
        cfg = self.cfg
        try:
            self.training += training_rows(run_dir, ident)
        except LandscapeError as exc:
            self.problem(run_dir / "metrics.csv", "log", str(exc))
        mine = [n for n in self.names if cfg[n]["runs"] is None or ident["run"] in cfg[n]["runs"]]
        if not mine:
            return
        paths = dict(checkpoints_of(run_dir))
        if not paths:
            self.problem(run_dir, "checkpoints", "the run folder holds no checkpoint (epoch_*.pt)")
            return
        avail = sorted(paths)
        gaps = sorted(expected_epochs(run_dir, avail) - set(avail))
        if gaps:
            self.problem(run_dir, "epochs", f"run {ident['run']}: no checkpoint for epoch(s) "
                         f"{', '.join(map(str, gaps))}; analysing the epochs that are there")
        hashes = {}
        for e in avail:
            try:  # a checkpoint must belong where it sits, also when its results come from the cache
                check_placement(paths[e])
                hashes[e] = self.cache.file_hash(paths[e])
            except LandscapeError as exc:
                self.problem(paths[e], "load", _reason(exc, paths[e]))
            except OSError as exc:
                self.problem(paths[e], "read", f"cannot read it ({exc})")
        avail = [e for e in avail if e in hashes]

        plan: dict[int, list] = {}  # epoch -> [(name, key, prev or None)]
        need_state: dict[int, set] = {}
        for n in mine:
            mod = MODULES[n]
            sel = select_epochs(cfg[n]["epochs"], avail, f"[analysis.{n}] epochs")
            csett = {**cache_settings(cfg, n), "kernels": self.kernels}  # numbers of another kernel mode are others
            pairwise = mod.PAIRWISE
            for e in sel:
                prev = None
                if pairwise:
                    earlier = [p for p in avail if p < e]
                    if not earlier:
                        continue
                    prev = earlier[-1]
                key = cache_key(n, mod.VERSION, csett, [hashes[prev], hashes[e]] if pairwise else [hashes[e]])
                if not self._from_cache(n, key, {**ident, "epoch": e}):
                    plan.setdefault(e, []).append((n, key, prev))
                    if pairwise:
                        need_state.setdefault(prev, set()).add(n)
                        need_state.setdefault(e, set()).add(n)
            if n == "crossings":
                try:
                    self.add(n, crossings.from_log(run_dir, ident, epochs=sel))
                except LandscapeError as exc:
                    self.problem(run_dir / "crossings.csv", "crossings", str(exc))
        self._execute(run_dir, ident, paths, hashes, plan, need_state)

    def _from_cache(self, name: str, key: str, meta: dict) -> bool:
        if self.force:
            return False
        hit = self.cache.get(name, key)
        if hit is None:
            return False
        if "epoch" in hit and not (pd.to_numeric(hit["epoch"], errors="coerce") == meta["epoch"]).all():
            # the key hashes the checkpoint, which holds its epoch: rows of another epoch are misplaced
            self.cache.reject(f"{name}/{key}.csv", f"holds rows of another epoch than epoch {meta['epoch']} "
                              f"of {meta['run']}")
            return False
        self.add(name, _restamp(hit, meta))
        return True

    def _execute(self, run_dir, ident, paths, hashes, plan, need_state) -> None:
        work = sorted(set(plan) | set(need_state))
        if not work:
            return
        label = f"{ident['run']}-seed{ident['seed']}"
        bar = _Progress(label, len(work), self.progress)
        states: dict[tuple[str, int], object] = {}
        bad: set[int] = set()
        tag = f"{Path(run_dir).name}-{hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]}"
        for e in work:
            t0 = time.perf_counter()
            meta = {**ident, "epoch": e}
            with self.cache.lock(f"{tag}-e{e}"):
                todo = [(n, k, p) for n, k, p in plan.get(e, []) if not self._from_cache(n, k, meta)]
                if not todo and e not in need_state:
                    bar.step(e, [], time.perf_counter() - t0)
                    continue
                need_kl = any("kl" in needed_losses(n, self.cfg) for n, _, _ in todo) or \
                    any("kl" in needed_losses(n, self.cfg) for n in need_state.get(e, ()))
                try:
                    point = self.loader.load(paths[e], meta, hashes[e], need_kl=need_kl)
                except Exception as exc:  # noqa: BLE001 - any failure to load names the file
                    bad.add(e)
                    self.problem(paths[e], "load", _reason(exc, paths[e]))
                    bar.step(e, [], time.perf_counter() - t0)
                    continue
                for n, key, prev in todo:
                    if prev is None:
                        self._one(n, key, point, paths[e], lambda n=n, point=point: MODULES[n].analyze(point, self.cfg))
                for n in need_state.get(e, ()):
                    try:
                        states[(n, e)] = MODULES[n].state(point, self.cfg)
                    except _bad_input() as exc:  # as in _one: a bug in landscape is raised, not listed
                        self.problem(paths[e], n, _reason(exc, paths[e]))
                for n, key, prev in todo:
                    if prev is None:
                        continue
                    if (n, e) not in states:
                        continue  # this checkpoint's own state failed: its problem is already listed
                    if prev in bad or (n, prev) not in states:
                        self.problem(paths[e], n, f"needs epoch {prev}, which could not be analysed")
                        continue
                    self._one(n, key, point, paths[e],
                              lambda n=n, prev=prev: MODULES[n].compare(states[(n, prev)], states[(n, e)], meta,
                                                                        prev, self.cfg))
            for key in [k for k in states if k[1] < e]:  # a state is needed by the next epoch at most
                del states[key]
            del point
            bar.step(e, [n for n, _, _ in todo], time.perf_counter() - t0)
        bar.close()

    def _one(self, name, key, point, path, compute) -> None:
        """Run one analysis on one checkpoint; cache it only if nothing it needed was missing."""
        try:
            rows = compute()
        except _bad_input() as exc:
            # one checkpoint's bad input (a corrupt file, a NaN loss, no memory left for it) never
            # stops the sweep; anything else is a bug in landscape and is raised as one
            self.problem(path, name, _reason(exc, path))
            return
        missing = [l for l in needed_losses(name, self.cfg) if l in point.unavailable]
        for loss in missing:
            self.problem(path, name, f"loss {loss!r} not analysed: {point.unavailable[loss]}")
        if not missing:
            self.cache.put(name, key, rows)
        self.computed += 1
        self.add(name, rows)

    # ------------------------------------------------------------------ gather
    def finish(self, out_dir: Path) -> AnalysisTables:
        if not any(self.tables.values()):
            detail = "; ".join(map(str, self.problems[:5])) if self.problems else \
                "no checkpoint matched the analyses' runs/epochs"
            raise AnalysisError(f"nothing left to analyse: {detail}")
        out = AnalysisTables(problems=self.problems, computed=self.computed)
        out_dir.mkdir(parents=True, exist_ok=True)
        for n in self.names:
            parts = self.tables[n]
            df = to_table(pd.concat(parts, ignore_index=True)) if parts else to_table([])
            if df.empty:
                self.problem(out_dir / f"{n}.csv", n, "no rows: no checkpoint of the given runs was analysed for it")
            else:
                df = df.sort_values(["run", "seed", "epoch", "metric"], kind="stable").reset_index(drop=True)
            write_csv(df, out_dir / f"{n}.csv")
            out[n] = df
        out.problems = self.problems
        train_df = pd.DataFrame(self.training, columns=["run", "seed", "epoch", "metric", "value"])
        write_csv(train_df, out_dir / "training.csv")
        out["training"] = train_df
        return out


def _say_rejected(cache: Cache) -> None:
    """One warning for the cache entries found bad on a hit (they were recomputed, never used)."""
    bad = getattr(cache, "rejected", [])
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        warnings.warn(f"{len(bad)} cache entr{'y' if len(bad) == 1 else 'ies'} failed the integrity check "
                      f"and were recomputed: {'; '.join(bad[:3])}{more}", AnalysisWarning, stacklevel=3)
        bad.clear()


def _reason(exc: BaseException, path) -> str:
    """An exception as one line, without repeating the checkpoint path the problem names."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = msg.replace(f"{path}: ", "").replace(str(path), "this checkpoint")
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__

