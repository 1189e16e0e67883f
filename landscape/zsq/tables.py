"""The run folder's two CSV logs: metrics.csv (one row per epoch) and crossings.csv (tidy,
one row per quantized layer and student step).

    metrics.csv   epoch, phase, test_acc, teacher_acc, acc_drop, loss_ce, loss_kl, loss_total,
                  loss_g, loss_bns, kappa_mean, crossing_fraction, lr, rho, seconds
    crossings.csv epoch, step, layer, kappa, crossing_fraction, n_evals

``step`` counts iterations from the start of training (warm-up iterations included), so
step = (epoch - 1) * iters_per_epoch + i. ``phase`` is warmup, train or ptq. Rows are
appended after each epoch, before its checkpoint; :func:`truncate_after` drops the rows of
epochs that have no checkpoint (an interrupted epoch) when a run resumes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

METRICS_COLUMNS = ["epoch", "phase", "test_acc", "teacher_acc", "acc_drop", "loss_ce", "loss_kl",
                   "loss_total", "loss_g", "loss_bns", "kappa_mean", "crossing_fraction", "lr",
                   "rho", "seconds"]
CROSSING_COLUMNS = ["epoch", "step", "layer", "kappa", "crossing_fraction", "n_evals"]


def metrics_row(epoch, phase, test_acc, teacher_acc, means, crossings, lr, rho, seconds) -> dict:
    nan = math.nan
    n = len(crossings)
    return {"epoch": epoch, "phase": phase, "test_acc": test_acc, "teacher_acc": teacher_acc,
            "acc_drop": teacher_acc - test_acc,
            "loss_ce": means.get("loss_ce", nan), "loss_kl": means.get("loss_kl", nan),
            "loss_total": means.get("loss_total", nan), "loss_g": means.get("loss_g", nan),
            "loss_bns": means.get("loss_bns", nan),
            "kappa_mean": sum(r["kappa"] for r in crossings) / n if n else nan,
            "crossing_fraction": sum(r["crossing_fraction"] for r in crossings) / n if n else nan,
            "lr": lr, "rho": rho, "seconds": seconds}


def append_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def truncate_after(path: Path, epoch: int) -> None:
    """Keep only the rows with epoch <= ``epoch`` (atomic rewrite)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns, rows = reader.fieldnames, [r for r in reader if int(r["epoch"]) <= epoch]
    if columns is None:
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
