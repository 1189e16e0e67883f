"""Top Hessian eigenpair of each loss and the 1-D loss slice along it (METHOD.md §2.3).

For each loss L: the top (largest algebraic) eigenpair (λ, e) of its Hessian by power
iteration (the paper's method; ``method="lanczos"`` on request), then the slice

    L(θ + k · e · ĝ),   k ∈ [-k_max, k_max]  (default 0.5, ``n_points`` values)

ĝ scales the unit eigenvector. The paper calls it "the mean gradient along e"; we read it
as the magnitude of the mean gradient (over the analysis batches) projected on e,
ĝ = |<∇L, e>| (``scale="grad_along_e"``). ``scale="grad_norm"`` uses ‖∇L‖ and
``scale="unit"`` uses 1 (a plain slice along e). Each loss uses its own e and ĝ.

Rows: ``metric="top_eigenvalue"`` (stderr = the residual ‖He − λe‖, with n_matvecs),
``metric="slice_scale"`` (ĝ), ``metric="slice_loss"`` (one per k, column ``k``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from landscape.analyzers._common import Point, flat_gradient, make_hessian, row

NAME = "eigen"
VERSION = 1


def _top_vector(vectors, n: int) -> torch.Tensor:
    v = torch.as_tensor(vectors)
    if v.ndim == 1:
        return v
    return v[:, 0] if v.shape[0] == n else v[0]


def analyze(point: Point, cfg: dict) -> list[dict]:
    from landscape.curvature import loss_slice

    s = cfg[NAME]
    names = point.param_names()
    ks = np.linspace(-float(s["k_max"]), float(s["k_max"]), int(s["n_points"]))
    rows = []
    for loss in [l for l in cfg["losses"] if l in point.losses]:
        H = make_hessian(point, loss, names)
        n = int(H.shape[0])
        pairs = H.eigenpairs(k=1, method=s["method"], tol=s["tol"], max_iter=s["max_iter"], seed=s["seed"])
        lam = float(torch.as_tensor(pairs.values).flatten()[0])
        res = getattr(pairs, "residuals", None)
        res = float(torch.as_tensor(res).flatten()[0]) if res is not None else math.nan
        e = _top_vector(pairs.vectors, n).detach()
        e = e / e.norm()
        rows.append(row(point.meta, loss=loss, metric="top_eigenvalue", value=lam, stderr=res,
                        n_matvecs=int(pairs.n_matvecs)))
        g = flat_gradient(point, loss, names).to(e)
        if s["scale"] == "grad_along_e":
            scale = float((g @ e).abs())
        elif s["scale"] == "grad_norm":
            scale = float(g.norm())
        else:
            scale = 1.0
        rows.append(row(point.meta, loss=loss, metric="slice_scale", value=scale))
        values = loss_slice(point.model, point.losses[loss], point.batches, e * scale,
                            torch.as_tensor(ks, dtype=e.dtype), params=names)
        values = torch.as_tensor(values).detach().double().flatten().cpu().numpy()
        for k, v in zip(ks, values):
            rows.append(row(point.meta, loss=loss, metric="slice_loss", value=float(v), k=float(k)))
    return rows
