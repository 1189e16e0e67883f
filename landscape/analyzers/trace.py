"""Hessian trace of each loss (METHOD.md §2.2): Hutchinson or Hutch++ on the engine's operator.

    tr(H) ≈ (1/m) Σ_i z_iᵀ H z_i,   z_i Rademacher

The estimate's standard error and the number of Hessian-vector products travel with the
value (columns ``stderr`` and ``n_matvecs``). Smaller trace = flatter minimum. With
``per_layer``, also the trace of each layer's diagonal block (its own parameters only).

Rows: ``loss="ce"``/``"kl"``, ``metric="trace"``, ``layer="all"`` or a layer name.
"""

from __future__ import annotations

from landscape.analyzers._common import Point, layer_of, make_hessian, row

NAME = "trace"
VERSION = 1


def _estimate(point: Point, loss: str, params, cfg: dict):
    s = cfg[NAME]
    H = make_hessian(point, loss, params)
    est = H.trace(method=s["method"], max_matvecs=s["max_matvecs"], rtol=s["rtol"], seed=s["seed"])
    return float(est.value), float(est.stderr), int(est.n_matvecs)


def analyze(point: Point, cfg: dict) -> list[dict]:
    names = point.param_names()
    rows = []
    for loss in [l for l in cfg["losses"] if l in point.losses]:
        value, stderr, n = _estimate(point, loss, names, cfg)
        rows.append(row(point.meta, loss=loss, metric="trace", value=value, stderr=stderr, n_matvecs=n))
        if cfg[NAME]["per_layer"]:
            layers: dict[str, list[str]] = {}
            for name in names:
                layers.setdefault(layer_of(name), []).append(name)
            for layer, params in layers.items():
                value, stderr, n = _estimate(point, loss, params, cfg)
                rows.append(row(point.meta, loss=loss, layer=layer, metric="trace", value=value,
                                stderr=stderr, n_matvecs=n))
    return rows
