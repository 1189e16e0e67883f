"""Hessian trace of each loss (METHOD.md §2.2): Hutchinson or Hutch++ on the engine's operator.

    tr(H) ≈ (1/m) Σ_i z_iᵀ H z_i,   z_i Rademacher

The estimate's standard error, its number of Hessian-vector products and whether it met its
``rtol`` travel with the value. Probes are seeded per checkpoint (column ``probe_seed``): CE
and KL at one checkpoint share them, different checkpoints do not. Smaller trace = flatter
minimum. With ``per_layer``, also the trace of each layer's diagonal block. ``curvature =
"ggn"`` estimates the trace of the Gauss-Newton matrix instead. With a grouping
(``analyze_model(groups=...)``) also the trace of each group's block (``layer`` = ``"group:"`` + the group's name).

Also one ``loss_value`` row per loss: L(θ) on the same batches, for the relative sharpness
tr(H)/L that a constant factor on the loss cannot change.

Rows: ``metric="trace"`` (``layer="all"`` or a layer name), ``metric="loss_value"``.
"""

from __future__ import annotations

from landscape.analyzers._common import Point, group_views, loss_value, make_operator, probe_seed
from landscape.analyzers.tidy import row

NAME = "trace"
PAIRWISE = False
VERSION = 4  # 4: an estimate stopped by its cap alone (or without rtol) says converged=False


def _estimate(op, cfg: dict, seed: int) -> dict:
    s = cfg[NAME]
    est = op.trace(method=s["method"], max_matvecs=s["max_matvecs"], rtol=s["rtol"], seed=seed)
    return {"value": float(est.value), "stderr": float(est.stderr), "n_matvecs": int(est.n_matvecs),
            "converged": bool(est.converged), "probe_seed": seed, "curvature": s["curvature"]}


def analyze(point: Point, cfg: dict) -> list[dict]:
    seed = probe_seed(point, NAME, cfg[NAME]["seed"])
    rows = []
    for loss in point.available(cfg["losses"]):
        op = make_operator(point, loss, cfg[NAME]["curvature"])
        rows.append(row(point.meta, loss=loss, metric="trace", **_estimate(op, cfg, seed)))
        rows.append(row(point.meta, loss=loss, metric="loss_value", value=loss_value(point, loss)))
        if cfg[NAME]["per_layer"]:
            for layer, block in op.layers().items():  # views: one graph for every layer
                rows.append(row(point.meta, loss=loss, layer=layer, metric="trace", **_estimate(block, cfg, seed)))
        for group, block in group_views(point, op).items():  # analyze_model(groups=...): views too
            rows.append(row(point.meta, loss=loss, layer=group, metric="trace", **_estimate(block, cfg, seed)))
    return rows
