"""Eigenvalue spectral density of each loss's curvature by stochastic Lanczos quadrature (§2.4).

``n_runs`` random probe vectors × ``n_steps`` Lanczos steps give Ritz values (nodes) and
quadrature weights; their Gaussian-smoothed sum is the density on a grid spanning the nodes.
Negative eigenvalues are kept (a quantized student is rarely at a true minimum). With
``curvature = ["hessian", "ggn"]`` the Gauss-Newton matrix's density is computed beside the
Hessian's at the same checkpoint (positive semi-definite by construction: the Hessian's
negative part is its own).

Rows: ``metric="density"`` (column ``x`` the eigenvalue, ``value`` the density), and
``metric="ritz"`` (``x`` a node, ``value`` its weight, ``probe`` the SLQ probe vector it came
from; a loss's weights sum to 1), so that a figure or a finding can recompute any statistic of
the spectrum, and resample probe vectors for an interval. Column ``curvature``. With a grouping
(``analyze_model(groups=...)``) the same rows for each group's block (``layer`` = the group).
"""

from __future__ import annotations

import numpy as np
import torch

from landscape.analyzers._common import Point, group_views, make_operator, probe_seed
from landscape.analyzers.tidy import row

NAME = "density"
PAIRWISE = False
VERSION = 3


def _grid(lo: float, hi: float, n: int) -> np.ndarray:
    """Half the points evenly spaced over [lo, hi] (padded), half log-spaced away from 0 on each
    side, so that the density is resolved both on a linear and on a symmetric-log axis."""
    span = max(hi - lo, abs(hi), abs(lo), 1e-12)
    pad = 0.05 * span
    lo, hi = lo - pad, hi + pad
    parts = [np.linspace(lo, hi, max(n // 2, 2))]
    tiny = span * 1e-4
    if hi > tiny:
        parts.append(np.geomspace(tiny, hi, max(n // 4, 2)))
    if lo < -tiny:
        parts.append(-np.geomspace(tiny, -lo, max(n // 4, 2)))
    return np.unique(np.concatenate(parts + [np.zeros(1)]))


def _array(t) -> np.ndarray:
    return torch.as_tensor(t).detach().double().reshape(-1).cpu().numpy()


def analyze(point: Point, cfg: dict) -> list[dict]:
    s = cfg[NAME]
    seed = probe_seed(point, NAME, s["seed"])
    rows = []
    for curvature in s["curvature"]:
        for loss in point.available(cfg["losses"]):
            op = make_operator(point, loss, curvature)
            for layer, view in {"all": op, **group_views(point, op)}.items():  # groups: views of one graph
                rows += _rows(point, view, s, dict(loss=loss, layer=layer, probe_seed=seed, curvature=curvature))
    return rows


def _rows(point: Point, op, s: dict, common: dict) -> list[dict]:
    """The density and Ritz rows of one operator (the whole one, or a group's view)."""
    dens = op.density(n_runs=s["n_runs"], n_steps=s["n_steps"], seed=common["probe_seed"])
    common = dict(common, n_matvecs=int(dens.n_matvecs))
    nodes = [_array(t) for t in dens.nodes]
    weights = [_array(w) for w in dens.weights]
    total = sum(float(w.sum()) for w in weights)
    every = np.concatenate(nodes)
    grid = _grid(float(every.min()), float(every.max()), int(s["grid_points"]))
    values = _array(dens.evaluate(grid))
    rows = [row(point.meta, metric="density", x=float(x), value=float(v), **common) for x, v in zip(grid, values)]
    for probe, (nd, wt) in enumerate(zip(nodes, weights)):
        for x, w in zip(nd, wt):
            rows.append(row(point.meta, metric="ritz", x=float(x), value=float(w) / total, probe=probe, **common))
    return rows
