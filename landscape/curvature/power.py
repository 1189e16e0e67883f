r"""Power iteration with deflation: the top-k eigenpairs as used in the AIT paper (via PyHessian).

For the i-th pair, iterate on the deflated operator ``P A P`` with ``P = I − V Vᵀ`` (V the
pairs found so far):

    w = A v,   λ = vᵀ w (Rayleigh quotient, ‖v‖ = 1),   v ← P w / ‖P w‖,

stopping when the relative residual is at most ``tol``: ``‖A v − λ v‖ ≤ tol · |λ|`` (the same
rule as every eigensolver here; PyHessian's rule on the relative change of λ stops earlier
and does not bound the error). For a deflated pair the rule is applied to the deflated
residual ``‖P(A v − λ v)‖``; with k > 1 a final Rayleigh-Ritz step on the k vectors (k more
products) removes the coupling left by the earlier pairs' own residuals, and the residuals
reported (and ``converged``) are measured for A itself. Power iteration converges to the eigenvalue of largest
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

from .operators import _generator, check_eigen_args, gaussian, matmat
from .results import Eigenpairs

__all__ = ["power_iteration"]


def _project(x: torch.Tensor, V: list[torch.Tensor]) -> torch.Tensor:
    for u in V:
        x = x - (u @ x) * u
    return x


def _power_one(A, v, V, shift, tol, max_iter):
    """Power iteration on P(A − shift I)P from v.

    Stops when the *deflated* relative residual ``‖P(A v − λ v)‖ ≤ tol·|λ|`` (P projects out the
    pairs already found; for the first pair P = I). Returns (λ of A, v, true residual
    ``‖A v − λ v‖``, products, converged).
    """
    n_mv = 0
    lam, res = math.nan, math.nan
    for _ in range(max_iter):
        w = A @ v
        n_mv += 1
        lam = float(v @ w)
        r = w - lam * v
        res = float(torch.linalg.vector_norm(r))
        if (res if not V else float(torch.linalg.vector_norm(_project(r, V)))) <= tol * abs(lam):
            return lam, v, res, n_mv, True
        w = _project(w - shift * v if shift else w, V)
        norm = float(torch.linalg.vector_norm(w))
        if norm == 0.0 or not math.isfinite(norm):
            return lam, v, res, n_mv, False
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

    ``tol``: relative residual ``‖A v − λ v‖/|λ|`` at which a pair is accepted. ``max_iter``:
    the most products for the whole call (default ``100·k``, PyHessian's 100 per eigenvalue);
    each pair may use an even share of what the previous pairs left.
    Returns :class:`Eigenpairs` sorted largest first (algebraic for ``"LA"``, magnitude for ``"LM"``).

    Example::

        >>> import torch
        >>> from landscape.curvature import power_iteration
        >>> A = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
        >>> pairs = power_iteration(A, k=1, tol=1e-8, max_iter=200)
        >>> round(float(pairs.values[0]), 6), pairs.converged
        (3.0, True)
    """
    n, dtype, device, which, max_iter = check_eigen_args(A, k, which, tol, max_iter, default_max_iter=100 * k)
    gen = _generator(seed)
    V: list[torch.Tensor] = []
    lams, res = [], []
    n_mv = 0
    all_conv = True
    refine = k > 1 and max_iter >= 2 * k
    budget = max_iter - k if refine else max_iter
    for i in range(k):
        share = max(1, (budget - n_mv) // (k - i))
        v = _project(gaussian(n, 1, gen, dtype, device)[:, 0], V)
        v = v / torch.linalg.vector_norm(v)
        lam, u, r, m, conv = _power_one(A, v, V, 0.0, tol, share)
        n_mv += m
        if which == "LA" and lam < 0 and n > len(V) + 1:
            # dominant eigenvalue is negative: the largest algebraic one is dominant for A − λ I
            # (restart from the random start, which has a component along it; u has almost none)
            lam, u, r, m, conv = _power_one(A, v, V, lam, tol, max(1, (budget - n_mv) // (k - i)))
            n_mv += m
        all_conv &= conv
        u = _project(u, V)
        u = u / torch.linalg.vector_norm(u)
        V.append(u)
        lams.append(lam)
        res.append(r)
    Vm = torch.stack(V, dim=1)
    values = torch.tensor(lams, dtype=torch.float64)
    residuals = torch.tensor(res, dtype=torch.float64)
    if refine:
        # Rayleigh-Ritz on span(V) (k products): removes the coupling between deflated pairs, which
        # otherwise floors a later pair's residual at the earlier pairs' residuals
        AV = matmat(A, Vm)
        n_mv += k
        T = Vm.T @ AV
        theta, Y = torch.linalg.eigh(((T + T.T) / 2).double().cpu())
        Yd = Y.to(dtype=dtype, device=device)
        Vm, AV = Vm @ Yd, AV @ Yd
        values = theta
        residuals = torch.linalg.vector_norm(AV - Vm * theta.to(dtype=dtype, device=device), dim=0).double().cpu()
        all_conv &= bool(torch.all(residuals <= tol * values.abs() * (1 + 1e-6)))
    key = (lambda i: -float(values[i])) if which == "LA" else (lambda i: -abs(float(values[i])))
    order = sorted(range(k), key=key)
    return Eigenpairs(
        values=values[order].clone(),
        vectors=Vm[:, order],
        residuals=residuals[order].clone(),
        n_matvecs=n_mv,
        method="power",
        which=which,
        converged=all_conv,
        tol=float(tol),
    )
