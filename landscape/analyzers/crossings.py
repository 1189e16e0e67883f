"""Rounding-threshold crossings (METHOD.md §2.6): how many weights change integer code?

Two views, both per layer and epoch:

- ``metric="code_change_fraction"``: between consecutive checkpoints, the fraction of a
  layer's weights whose integer code q differs (``layer="all"``: over every quantized
  weight); ``metric="codes_changed"`` is the count. Computed from the checkpoints.
- ``metric="step_crossing_fraction"``: the trainer's own log (``crossings.csv``: the fraction
  crossing at each optimizer step), averaged over the epoch's steps (stderr over steps);
  ``metric="kappa"``: the mean gradient-inundation factor κ (1 for plain runs).

The paper's finding is about the per-step fraction (order 1e-5 under KL-only ZQ); the
epoch-to-epoch fraction accumulates many steps and is larger.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from landscape.analyzers._common import Point
from landscape.analyzers.tidy import row

NAME = "crossings"
VERSION = 1
PAIRWISE = True


def state(point: Point, cfg: dict):
    from landscape.quant import integer_codes

    return {k: torch.as_tensor(v).detach().cpu() for k, v in integer_codes(point.model).items()}


def compare(prev, cur, meta: dict, prev_epoch: int, cfg: dict) -> list[dict]:
    rows = []
    total = changed_all = 0
    for layer, q in cur.items():
        if layer not in prev or prev[layer].shape != q.shape:
            continue
        changed = int((prev[layer] != q).sum())
        total += q.numel()
        changed_all += changed
        rows.append(row(meta, layer=layer, metric="code_change_fraction", value=changed / q.numel(),
                        prev_epoch=prev_epoch))
        rows.append(row(meta, layer=layer, metric="codes_changed", value=float(changed),
                        prev_epoch=prev_epoch))
    if total:
        rows.insert(0, row(meta, metric="codes_changed", value=float(changed_all), prev_epoch=prev_epoch))
        rows.insert(0, row(meta, metric="code_change_fraction", value=changed_all / total,
                           prev_epoch=prev_epoch))
    return rows


def from_log(run_dir: Path, meta: dict, epochs=None) -> list[dict]:
    """Per-layer per-epoch summary of the trainer's ``crossings.csv`` (no checkpoint needed).

    A damaged log (unreadable, wrong columns, duplicated rows) is a
    :class:`~landscape.zsq.tables.LogError` naming the file, never fewer rows in silence."""
    from landscape.sealed_logs import sealed_crossings

    log = sealed_crossings(run_dir)  # checked against metrics.csv and the sealed checkpoints
    if log.empty:
        return []
    if epochs is not None:
        log = log[log["epoch"].isin(list(epochs))]
    rows = []
    base = {k: v for k, v in meta.items() if k != "epoch"}
    log = log.sort_values(["epoch"], kind="stable")  # layers stay in network (log) order
    for (epoch, layer), grp in log.groupby(["epoch", "layer"], sort=False):
        cf = grp["crossing_fraction"].astype(float)
        n = int(cf.notna().sum())
        se = float(cf.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        m = {**base, "epoch": int(epoch)}
        rows.append(row(m, layer=str(layer), metric="step_crossing_fraction", value=float(cf.mean()),
                        stderr=se))
        if "kappa" in grp:
            rows.append(row(m, layer=str(layer), metric="kappa", value=float(grp["kappa"].astype(float).mean())))
    # the whole student: mean over layers of the step fraction (layers weighted equally)
    for epoch, grp in log.groupby("epoch", sort=True):
        m = {**base, "epoch": int(epoch)}
        per_layer = grp.groupby("layer", sort=False)["crossing_fraction"].mean()
        rows.append(row(m, layer="all", metric="step_crossing_fraction", value=float(per_layer.mean())))
    return rows
