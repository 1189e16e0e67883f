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
VERSION = 1


def _flat(parts) -> np.ndarray:
    """Nodes or weights (one array per run, runs may differ in length) as one float64 array."""
    if isinstance(parts, torch.Tensor):
        return parts.detach().double().flatten().cpu().numpy()
    return np.concatenate([np.asarray(torch.as_tensor(p).double().cpu()).reshape(-1) for p in parts])


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
        lo, hi = float(nodes.min()), float(nodes.max())
        pad = 0.05 * max(hi - lo, abs(hi), 1e-12)
        grid = np.linspace(lo - pad, hi + pad, int(s["grid_points"]))
        values = np.asarray(dens.evaluate(grid), dtype=np.float64).reshape(-1)
        for x, v in zip(grid, values):
            rows.append(row(point.meta, loss=loss, metric="density", x=float(x), value=float(v),
                            n_matvecs=n))
        for x, w in zip(nodes, weights):
            rows.append(row(point.meta, loss=loss, metric="ritz", x=float(x), value=float(w), n_matvecs=n))
    return rows
