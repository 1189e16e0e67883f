"""Eigenvalue spectral density of each loss's Hessian by stochastic Lanczos quadrature (§2.4).

``n_runs`` random start vectors × ``n_steps`` Lanczos steps give Ritz values (nodes) and
quadrature weights; their Gaussian-smoothed sum is the density on a grid spanning the
nodes. Negative eigenvalues are kept (a quantized student is rarely at a true minimum).

Rows: ``metric="density"`` (column ``x`` the eigenvalue, ``value`` the density), and
``metric="ritz"`` (``x`` a node, ``value`` its weight; all weights of a loss sum to 1), so
that a figure or a finding can recompute any statistic of the spectrum from the table.
"""

from __future__ import annotations

import numpy as np
import torch

from landscape.analyzers._common import Point, make_hessian, row

NAME = "density"
VERSION = 2


def _flat(parts) -> np.ndarray:
    """Nodes or weights (one array per run, runs may differ in length) as one float64 array."""
    if isinstance(parts, torch.Tensor):
        return parts.detach().double().flatten().cpu().numpy()
    return np.concatenate([np.asarray(torch.as_tensor(p).double().cpu()).reshape(-1) for p in parts])


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


def analyze(point: Point, cfg: dict) -> list[dict]:
    s = cfg[NAME]
    rows = []
    for loss in [l for l in cfg["losses"] if l in point.losses]:
        H = make_hessian(point, loss)
        before = int(getattr(H, "n_matvecs", 0))
        dens = H.density(n_runs=s["n_runs"], n_steps=s["n_steps"], seed=s["seed"])
        n = int(getattr(dens, "n_matvecs", 0) or (int(getattr(H, "n_matvecs", 0)) - before))
        nodes = _flat(dens.nodes)
        weights = _flat(dens.weights)
        weights = weights / weights.sum()
        grid = _grid(float(nodes.min()), float(nodes.max()), int(s["grid_points"]))
        values = np.asarray(dens.evaluate(grid), dtype=np.float64).reshape(-1)
        for x, v in zip(grid, values):
            rows.append(row(point.meta, loss=loss, metric="density", x=float(x), value=float(v),
                            n_matvecs=n))
        for x, w in zip(nodes, weights):
            rows.append(row(point.meta, loss=loss, metric="ritz", x=float(x), value=float(w), n_matvecs=n))
    return rows
