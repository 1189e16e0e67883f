"""Test accuracy of a recipe's runs over seeds, best and final, as the paper reports it.

    print(report("checkpoints/default"))          # a recipe folder: every <run>-seed<S>/
    print(report(["ck/default/ait-seed0", "ck/default/ait-seed1"]))  # or run folders
    python -m landscape.zsq.report checkpoints/default

The official AIT code reports the **best** test accuracy over all epochs (warm-up
included); the **final** one is the last epoch's. Both come from each run's validated
metrics.csv, checked against the sealed checkpoints (:func:`landscape.sealed_logs.sealed_metrics`:
the checkpoints decide the committed epochs and their numbers): best = max of ``test_acc``.
The table gives mean ± std (ddof 1) over seeds, then one row per run and seed, each with its
**effective batch** (samples per optimizer step: N ranks × per-rank batch), from metrics.csv's
``effective_batch`` or, for a metrics.csv written before that column, from the run's
config.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from landscape.checkpoints import CheckpointError, read_run_config
from landscape.errors import LandscapeError
from landscape.sealed_logs import sealed_metrics
from landscape.zsq.parallel import effective_batch

RUN_ORDER = ["teacher", "ptq", "kd", "gdfq", "kl", "ait"]


class ReportError(LandscapeError, FileNotFoundError):
    """Nothing to report under the path given."""


Paths = str | Path | Sequence[str | Path]  # one folder or several


def _run_folders(paths) -> list[Path]:
    """The run folders named, or found one level under the recipe folders named (in order)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found: list[Path] = []
    for path in map(Path, paths):
        here = [path] if _is_run(path) else sorted(p for p in path.glob("*-seed*") if _is_run(p))
        if not here:
            raise ReportError(f"no metrics.csv in {path} nor in any {path}/<run>-seed<S>/; point at "
                              "run folders or a recipe folder (checkpoints/<recipe>) after "
                              "`landscape train`")
        found += [p for p in here if p not in found]
    return found


def _is_run(path: Path) -> bool:
    """A run folder: its metrics.csv, or (the log lost) a checkpoint to rebuild it from."""
    return (path / "metrics.csv").is_file() or (path.is_dir() and any(path.glob("epoch_*.pt")))


def _effective_batch(run_dir: Path, table: pd.DataFrame) -> float:
    """The run's effective batch: metrics.csv's last row, else config.json (legacy logs), else NaN."""
    logged = table["effective_batch"].dropna()
    if len(logged):
        return float(logged.iloc[-1])
    try:
        config = read_run_config(run_dir)
    except CheckpointError:
        config = None
    try:
        return float(effective_batch(config)) if config else float("nan")
    except (KeyError, TypeError, AttributeError):
        return float("nan")


def accuracies(paths: Paths) -> pd.DataFrame:
    """One row per run folder: run, seed, epochs, final_acc, best_acc, best_epoch, teacher_acc,
    effective_batch (NaN when neither metrics.csv nor config.json states it)."""
    rows = []
    for run_dir in _run_folders(paths):
        run, _, seed = run_dir.name.rpartition("-seed")
        table = sealed_metrics(run_dir)  # checked against the sealed checkpoints
        if table.empty:
            continue
        best = int(table["test_acc"].to_numpy().argmax())
        rows.append({"run": run or run_dir.name, "seed": int(seed) if seed.isdigit() else -1,
                     "epochs": int(table["epoch"].iloc[-1]),
                     "final_acc": float(table["test_acc"].iloc[-1]),
                     "best_acc": float(table["test_acc"].iloc[best]),
                     "best_epoch": int(table["epoch"].iloc[best]),
                     "teacher_acc": float(table["teacher_acc"].iloc[-1]),
                     "effective_batch": _effective_batch(run_dir, table)})
    if not rows:
        raise ReportError(f"the metrics.csv files under {paths} are empty; train the runs first")
    return pd.DataFrame(rows)


def _ordered(index) -> list:
    return [r for r in RUN_ORDER if r in index] + sorted(r for r in index if r not in RUN_ORDER)


def accuracy_table(paths: Paths) -> pd.DataFrame:
    """Per run (the teacher included): best_mean, best_std, final_mean, final_std, n (seeds)."""
    df = accuracies(paths)
    teacher = df.drop_duplicates("seed")[["seed", "teacher_acc"]]
    teacher = teacher.assign(run="teacher", best_acc=teacher.teacher_acc, final_acc=teacher.teacher_acc)
    df = pd.concat([df, teacher], ignore_index=True)
    g = df.groupby("run")
    out = pd.DataFrame({"best_mean": g.best_acc.mean(), "best_std": g.best_acc.std(ddof=1),
                        "final_mean": g.final_acc.mean(), "final_std": g.final_acc.std(ddof=1),
                        "n": g.size()})
    return out.loc[_ordered(out.index)]


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}")


def _batches(values) -> str:
    """Effective batch(es) as text: ``64``, ``32, 64`` when seeds differ, ``—`` when unknown."""
    known = sorted({int(v) for v in values if not pd.isna(v)})
    return ", ".join(map(str, known)) or "—"


def markdown(paths: Paths) -> str:
    """The summary table (mean ± std over seeds) and the per-seed table, as markdown."""
    per_seed = accuracies(paths)
    table = accuracy_table(paths)
    lines = ["| run | best test acc. (%) | final test acc. (%) | seeds | effective batch |",
             "|---|---|---|---|---|"]
    for run, r in table.iterrows():
        batch = "—" if run == "teacher" else _batches(per_seed[per_seed.run == run].effective_batch)
        lines.append(f"| {run} | {_pm(r.best_mean, r.best_std)} | {_pm(r.final_mean, r.final_std)} "
                     f"| {int(r.n)} | {batch} |")
    lines += ["", "| run | seed | best (epoch) | final (epoch) | effective batch |", "|---|---|---|---|---|"]
    per_seed = per_seed.assign(order=per_seed.run.map({r: i for i, r in enumerate(_ordered(set(per_seed.run)))}))
    for _, r in per_seed.sort_values(["order", "seed"]).iterrows():
        lines.append(f"| {r.run} | {r.seed} | {r.best_acc:.2f} ({r.best_epoch}) | "
                     f"{r.final_acc:.2f} ({r.epochs}) | {_batches([r.effective_batch])} |")
    return "\n".join(lines)


def report(paths: Paths) -> str:
    """``landscape report DIR...``: the markdown of :func:`markdown` for run folders and/or
    recipe folders (one path or a list).

    Raises :class:`ReportError` when there is nothing to report and
    :class:`~landscape.zsq.tables.LogError` for a metrics.csv that is junk (both name the path).
    """
    return markdown(paths)


if __name__ == "__main__":
    print(report(sys.argv[1:] or "checkpoints/default"))
