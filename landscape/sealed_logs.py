"""The run folder's logs checked against its sealed checkpoints, on every read.

    metrics, crossings = sealed_logs(run_dir)      # DataFrames; LogError if the log disagrees

Every checkpoint holds its epoch's ``metrics.csv`` row (without the wall-clock ``seconds``),
sealed by its content hash, so the checkpoints, not the log, decide which epochs are
committed and what their numbers are:

- **one row per sealed epoch**: a row of an epoch beyond the last checkpoint file (a kill
  between the log append and the checkpoint save, or rows edited in) is uncommitted and
  dropped; a row missing for a checkpoint (deleted, or the whole
  log deleted) is **rebuilt from the checkpoint** (``seconds`` then reads NaN), and said;
- **the same numbers**: every value of a row must equal the one its checkpoint holds (NaN
  equals NaN); a row that differs is a :class:`~landscape.zsq.tables.LogError` naming the
  file, the line, the column and both values (the CLI exits 3 for ``analyze``, 2 for ``report``);
- **in range** (checked by :func:`~landscape.zsq.tables.read_metrics`): accuracies in
  [0, 100], finite losses, a crossing fraction in [0, 1];
- **crossings.csv agrees with metrics.csv**: for every committed epoch, the mean of its
  ``kappa`` and ``crossing_fraction`` rows and the count of ``capped`` rows equal that epoch's
  ``kappa_mean``, ``crossing_fraction`` and ``kappa_capped`` (so a deleted or edited row is
  seen); rows of uncommitted epochs are dropped.

Checkpoints are read for this through :func:`~landscape.checkpoints.check_placement` (their
small pickle only, identity checked, a few ms each); the row of a checkpoint that cannot be
read is kept as logged, unchecked (the analyses name the checkpoint).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd

from landscape.checkpoints import check_placement, list_checkpoints, read_run_config
from landscape.errors import LandscapeError
from landscape.zsq.tables import METRICS_COLUMNS, LogError, read_crossings, read_metrics

__all__ = ["LogWarning", "sealed_metrics", "sealed_crossings", "sealed_logs"]


class LogWarning(UserWarning):
    """A log row was rebuilt from its checkpoint, or dropped as uncommitted."""


def _fix(path: Path) -> str:
    return (f"restore {path.name} from a copy, or delete the run folder {path.parent} and retrain it "
            "(the checkpoints are sound)")


_MEMO: dict[tuple, dict | None] = {}  # (path, size, mtime, ctime, inode) -> metrics row


def _row_of(path: Path) -> dict | None:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _MEMO:
        try:
            row = check_placement(path).get("metrics")
        except LandscapeError:
            row = None
        _MEMO[key] = dict(row) if isinstance(row, dict) else None
    return _MEMO[key]


def _sealed_rows(run_dir: Path) -> tuple[int | None, dict[int, tuple[Path, dict]]]:
    """``(last epoch with a checkpoint file, {epoch: (checkpoint, its metrics row)})`` of the
    checkpoints that can be read (memoised on each file's size, mtime, ctime and inode); an
    unreadable checkpoint still marks its epoch as reached (its row is kept unchecked)."""
    out = {}
    present = list_checkpoints(run_dir)
    for epoch, path in present:
        try:
            row = _row_of(path)
        except OSError:
            continue
        if row is not None:
            out[epoch] = (path, row)
    return (max(e for e, _ in present) if present else None), out


def _effective_batch(run_dir: Path) -> float:
    from landscape.zsq.parallel import effective_batch

    try:
        config = read_run_config(run_dir)
        return float(effective_batch(config)) if config else math.nan
    except (LandscapeError, KeyError, TypeError, AttributeError):
        return math.nan


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def sealed_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``metrics.csv`` checked against the sealed checkpoints (see the module docstring):
    uncommitted rows dropped, missing rows rebuilt (each said once, as a :class:`LogWarning`),
    a disagreeing value a :class:`~landscape.zsq.tables.LogError`."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    log = read_metrics(path)
    last, sealed = _sealed_rows(run_dir)
    if last is None:
        return log
    later = log[log["epoch"] > last]
    if len(later):
        warnings.warn(f"{path}: epoch(s) {', '.join(map(str, later['epoch']))} have no checkpoint after "
                      f"the last one (epoch {last}): uncommitted (a run stopped between its log and its "
                      "checkpoint), left out", LogWarning, stacklevel=3)
        log = log[log["epoch"] <= last]
    by_epoch = {int(e): i for i, e in enumerate(log["epoch"])}
    for epoch, (ckpt, row) in sealed.items():
        i = by_epoch.get(epoch)
        if i is None:
            continue
        for col, value in row.items():
            if col not in log.columns:
                continue
            logged = log[col].iloc[i]
            logged = logged.item() if hasattr(logged, "item") else logged
            if not _same(logged, value):
                raise LogError(f"{path} line {i + 2}: {col} = {logged!r}, but the sealed checkpoint "
                               f"{ckpt.name} says {value!r}: the log was edited or damaged; {_fix(path)}")
    missing = sorted(e for e in sealed if e not in by_epoch)
    if missing:
        eb = _effective_batch(run_dir)
        rebuilt = [{**{c: math.nan for c in METRICS_COLUMNS}, "effective_batch": eb,
                    **{k: v for k, v in sealed[e][1].items() if k in METRICS_COLUMNS}} for e in missing]
        warnings.warn(f"{path}: no row for epoch(s) {', '.join(map(str, missing))}, whose checkpoints are "
                      f"sound{' (the file is missing)' if not path.exists() else ''}: rebuilt from the "
                      "checkpoints (seconds unknown)", LogWarning, stacklevel=3)
        add = pd.DataFrame(rebuilt, columns=METRICS_COLUMNS)
        log = add if log.empty else pd.concat([log, add], ignore_index=True)
        log = log.sort_values("epoch", kind="stable").reset_index(drop=True)
        for col in ("epoch", "kappa_capped", "effective_batch"):  # integer columns, as read_metrics reads them
            if log[col].notna().all():
                log[col] = log[col].astype("int64")
    return log.reset_index(drop=True)


def sealed_crossings(run_dir: str | Path, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """``crossings.csv`` checked against the (sealed) metrics: rows of uncommitted epochs
    dropped; an epoch whose rows do not give its metrics row's means and capped count is a
    :class:`~landscape.zsq.tables.LogError` naming the file and the epoch."""
    run_dir = Path(run_dir)
    path = run_dir / "crossings.csv"
    log = read_crossings(path)
    metrics = sealed_metrics(run_dir) if metrics is None else metrics
    if metrics.empty:
        return log
    committed = set(int(e) for e in metrics["epoch"])
    extra = log[~log["epoch"].isin(committed)]
    if len(extra):
        if (extra["epoch"] < max(committed)).any():
            e = int(extra["epoch"][extra["epoch"] < max(committed)].iloc[0])
            raise LogError(f"{path} holds rows of epoch {e}, which metrics.csv and the checkpoints do not "
                           f"have; {_fix(path)}")
        log = log[log["epoch"].isin(committed)]
    groups = {int(e): g for e, g in log.groupby("epoch", sort=True)}
    for _, m in metrics.iterrows():
        e = int(m["epoch"])
        g = groups.get(e)
        want_rows = not math.isnan(m["kappa_mean"])
        if g is None:
            if want_rows:
                raise LogError(f"{path} has no rows of epoch {e}, whose metrics row has kappa_mean = "
                               f"{m['kappa_mean']!r}; {_fix(path)}")
            continue
        n = len(g)
        checks = (("kappa", "kappa_mean", sum(g["kappa"].tolist()) / n),
                  ("crossing_fraction", "crossing_fraction", sum(g["crossing_fraction"].tolist()) / n),
                  ("capped", "kappa_capped", float(sum(int(c) for c in g["capped"]))))
        for col, mcol, got in checks:
            want = float(m[mcol])
            if not (got == want or abs(got - want) <= 1e-9 * max(abs(want), 1e-12)):
                raise LogError(f"{path}: epoch {e}'s {n} rows give {mcol} = {got!r}, but metrics.csv (checked "
                               f"against the sealed checkpoint) says {want!r}: rows were deleted or edited; "
                               f"{_fix(path)}")
    return log.reset_index(drop=True)


def sealed_logs(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(metrics, crossings)`` of a run folder, both checked (see the module docstring)."""
    metrics = sealed_metrics(run_dir)
    return metrics, sealed_crossings(run_dir, metrics)
