r"""Power iteration with deflation: the top-k eigenpairs as used in the AIT paper (via PyHessian).

For the i-th pair, iterate on the deflated operator ``P A P`` with ``P = I − V Vᵀ`` (V the
pairs found so far):

    w = A v,   λ = vᵀ w (Rayleigh quotient, ‖v‖ = 1),   v ← P w / ‖P w‖,

stopping when the relative change of λ is at most ``tol``:
``|λ_t − λ_{t−1}| ≤ tol · |λ_{t−1}|``. Power iteration converges to the eigenvalue of largest
*magnitude*; for ``which="LA"`` (largest algebraic, the default) a negative dominant value is
followed by iteration on the shifted operator ``A − λ I`` (whose dominant eigenvalue is the
largest algebraic one). The returned vector is the last iterate ``v`` whose Rayleigh quotient
and residual ``‖A v − λ v‖`` were measured by the last product (no extra product needed).

Convergence is linear with rate ``|λ₂/λ₁|``: use :func:`~landscape.curvature.lanczos.lanczos`
when that ratio is close to 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .operators import _generator, check_eigen_args, check_positive_int, gaussian
from .results import Eigenpairs

__all__ = ["power_iteration"]


def _project(x: torch.Tensor, V: list[torch.Tensor]) -> torch.Tensor:
    for u in V:
        x = x - (u @ x) * u
    return x


def _power_one(A, v, V, shift, tol, max_iter):
    """Power iteration on P(A − shift I)P from v; returns (λ of A, v, residual, products, converged)."""
    lam_prev = None
    n_mv = 0
    lam, res = math.nan, math.nan
    for _ in range(max_iter):
        w = A @ v
        n_mv += 1
        lam = float(v @ w)
        res = float(torch.linalg.vector_norm(w - lam * v))
        w = _project(w - shift * v if shift else w, V)
        norm = float(torch.linalg.vector_norm(w))
        if lam_prev is not None and abs(lam - lam_prev) <= tol * abs(lam_prev):
            return lam, v, res, n_mv, True
        if norm == 0.0 or not math.isfinite(norm):
            return lam, v, res, n_mv, norm == 0.0
        lam_prev = lam
        v = w / norm
    return lam, v, res, n_mv, False


def power_iteration(
    A: Any,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
) -> Eigenpairs:
    """Top-``k`` eigenpairs of a symmetric operator by power iteration with deflation.

    ``max_iter`` (default 100, like PyHessian) bounds the iterations per eigenpair.
    Returns :class:`Eigenpairs` sorted largest first (algebraic for ``"LA"``, magnitude for ``"LM"``).
    """
    n, dtype, device, which = check_eigen_args(A, k, which, tol)
    max_iter = 100 if max_iter is None else check_positive_int(max_iter, "max_iter")
    gen = _generator(seed)
    V: list[torch.Tensor] = []
    lams, res = [], []
    n_mv = 0
    all_conv = True
    for _ in range(k):
        v = _project(gaussian(n, 1, gen, dtype, device)[:, 0], V)
        v = v / torch.linalg.vector_norm(v)
        lam, u, r, m, conv = _power_one(A, v, V, 0.0, tol, max_iter)
        n_mv += m
        if which == "LA" and lam < 0 and n > len(V) + 1:
            # dominant eigenvalue is negative: the largest algebraic one is dominant for A − λ I
            lam, u, r, m, conv = _power_one(A, u, V, lam, tol, max_iter)
            n_mv += m
        all_conv &= conv
        u = _project(u, V)
        u = u / torch.linalg.vector_norm(u)
        V.append(u)
        lams.append(lam)
        res.append(r)
    key = (lambda i: -lams[i]) if which == "LA" else (lambda i: -abs(lams[i]))
    order = sorted(range(k), key=key)
    return Eigenpairs(
        values=torch.tensor([lams[i] for i in order], dtype=torch.float64),
        vectors=torch.stack([V[i] for i in order], dim=1),
        residuals=torch.tensor([res[i] for i in order], dtype=torch.float64),
        n_matvecs=n_mv,
        method="power",
        which=which,
        converged=all_conv,
    )
