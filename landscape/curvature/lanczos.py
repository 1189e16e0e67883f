r"""Lanczos with full reorthogonalization, and scipy's ``eigsh`` on the same operator.

Lanczos builds an orthonormal basis ``Q_j = [q_1 … q_j]`` of the Krylov space
``span{v, Av, …, A^{j−1} v}`` in which ``Q_jᵀ A Q_j = T_j`` is tridiagonal:

    β_j q_{j+1} = A q_j − α_j q_j − β_{j−1} q_{j−1},    α_j = q_jᵀ A q_j.

In floating point the q's lose orthogonality, so every new vector is orthogonalised against
all previous ones (twice: "twice is enough"); this costs O(n j) per step and n·j memory but
keeps the Ritz values free of spurious copies. A Ritz pair ``(θ_i, Q_j s_i)`` of ``T_j`` has
residual ``‖A Q_j s_i − θ_i Q_j s_i‖ = |β_j · s_i[j]|`` (exact in exact arithmetic), which
gives the stopping rule: all k wanted pairs satisfy ``|β_j s_i[j]| ≤ tol · |θ_i|``. The
eigenvalue error is then about residual² / gap, far below ``tol`` when the gap is not tiny.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from .errors import CurvatureError
from .operators import _generator, check_eigen_args, gaussian, operator_info, rademacher
from .results import Eigenpairs

__all__ = ["lanczos", "eigsh", "lanczos_tridiagonal"]


def lanczos_tridiagonal(
    A: Any,
    v0: torch.Tensor,
    n_steps: int,
    *,
    restart: Callable[[], torch.Tensor] | None = None,
    should_stop: Callable[[np.ndarray, np.ndarray, int], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Run up to ``n_steps`` Lanczos steps from ``v0``.

    Returns ``(alpha, beta, Q)``: the diagonal (length j), the off-diagonal *including* the
    trailing β_j (length j) and the basis ``Q`` (n × j). On breakdown (β ≈ 0, an invariant
    subspace) the run stops, or continues from ``restart()`` orthogonalised against Q with
    a zero off-diagonal entry. ``should_stop(alpha, beta, j)`` is called after each step.
    """
    n = v0.shape[0]
    n_steps = min(n_steps, n)
    Q = torch.zeros(n, n_steps, dtype=v0.dtype, device=v0.device)
    alpha = np.zeros(n_steps)
    beta = np.zeros(n_steps)
    q = v0 / torch.linalg.vector_norm(v0)
    scale = 0.0
    j = 0
    for j in range(n_steps):
        Q[:, j] = q
        w = A @ q
        a = float(q @ w)
        alpha[j] = a
        Qj = Q[:, : j + 1]
        for _ in range(2):  # full reorthogonalization, twice
            w = w - Qj @ (Qj.T @ w)
        b = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(a), b)
        beta[j] = b
        if should_stop is not None and should_stop(alpha[: j + 1], beta[: j + 1], j + 1):
            return alpha[: j + 1], beta[: j + 1], Q[:, : j + 1]
        if j + 1 == n_steps:
            break
        if b <= 1e-10 * max(scale, 1e-300) or not math.isfinite(b):
            beta[j] = 0.0
            if restart is None:
                return alpha[: j + 1], beta[: j + 1], Q[:, : j + 1]
            w = restart()
            for _ in range(2):
                w = w - Qj @ (Qj.T @ w)
            nw = float(torch.linalg.vector_norm(w))
            if nw == 0.0:
                return alpha[: j + 1], beta[: j + 1], Q[:, : j + 1]
            q = w / nw
        else:
            q = w / b
    return alpha[: j + 1], beta[: j + 1], Q[:, : j + 1]


def _tridiag_eig(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.linalg import eigh_tridiagonal

    if len(alpha) == 1:
        return alpha.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alpha, beta[: len(alpha) - 1])


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    key = -theta if which == "LA" else -np.abs(theta)
    return np.argsort(key, kind="stable")[:k]


def lanczos(
    A: Any,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
) -> Eigenpairs:
    """Top-``k`` eigenpairs by Lanczos with full reorthogonalization.

    Stops when every wanted Ritz pair has ``|β_j s_i[j]| ≤ tol·|θ_i|`` (relative residual), or
    after ``max_iter`` steps, one product each (default ``max(100, 4k)``; never more than n); the
    residuals reported are those Lanczos estimates ``|β_j s_i[j]|``. ``which="LA"``: largest
    algebraic first; ``"LM"``: largest magnitude.

    Example::

        >>> import torch
        >>> from landscape.curvature import lanczos
        >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
        >>> pairs = lanczos(A, k=2, tol=1e-10)
        >>> [round(float(v), 8) for v in pairs.values], pairs.converged
        ([10.0, 9.0], True)
    """
    n, dtype, device, which, max_iter = check_eigen_args(A, k, which, tol, max_iter, default_max_iter=max(100, 4 * k))
    max_iter = min(n, max_iter)
    gen = _generator(seed)

    def converged(alpha, beta, j):
        if j < k:
            return False
        theta, S = _tridiag_eig(alpha, beta)
        idx = _select(theta, k, which)
        res = np.abs(beta[-1] * S[-1, idx])
        return bool(np.all(res <= tol * np.maximum(np.abs(theta[idx]), 1e-300)))

    v0 = gaussian(n, 1, gen, dtype, device)[:, 0]
    alpha, beta, Q = lanczos_tridiagonal(
        A, v0, max_iter, restart=lambda: gaussian(n, 1, gen, dtype, device)[:, 0], should_stop=converged
    )
    j = len(alpha)
    theta, S = _tridiag_eig(alpha, beta)
    idx = _select(theta, min(k, j), which)
    if len(idx) < k:
        raise CurvatureError(f"Lanczos found only {len(idx)} eigenpairs (Krylov space exhausted) for k={k}")
    res = np.abs(beta[-1] * S[-1, idx])
    vecs = Q @ torch.as_tensor(S[:, idx], dtype=dtype, device=device)
    vecs = vecs / torch.linalg.vector_norm(vecs, dim=0, keepdim=True)
    conv = bool(np.all(res <= tol * np.maximum(np.abs(theta[idx]), 1e-300))) or j == n
    return Eigenpairs(
        values=torch.tensor(theta[idx], dtype=torch.float64),
        vectors=vecs,
        residuals=torch.tensor(res, dtype=torch.float64),
        n_matvecs=j,
        method="lanczos",
        which=which,
        converged=conv,
        tol=float(tol),
    )


class _OutOfProducts(Exception):
    """Raised inside ARPACK's callback when it asks for more products than ``max_iter`` leaves."""


def eigsh(
    A: Any,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
) -> Eigenpairs:
    """Top-``k`` eigenpairs by ``scipy.sparse.linalg.eigsh`` (implicitly restarted Lanczos, ARPACK).

    ``tol`` is ARPACK's own rule, the relative residual ``‖A v − λ v‖ ≤ tol·|λ|`` (as for every
    solver here); ``tol=0`` means machine precision. ``max_iter`` is a hard cap on the products,
    as for ``lanczos`` and ``power_iteration``, the k products that measure the residuals
    included: ARPACK gets ``max_iter − k`` of them (its basis size ``ncv = min(n, max(2k + 1,
    20))`` shrunk to fit) and is stopped when it asks for more; a run stopped before every wanted
    pair converged is refused with a :class:`CurvatureError` naming ``max_iter`` (ARPACK keeps
    no usable unconverged pairs). Default: ``10·n·ncv`` (scipy's 10·n restarts).
    ``n_matvecs`` reports the products really spent (never more than ``max_iter``).
    ``residuals`` are measured with those k products, and ``converged`` says that ARPACK converged
    *and* every measured relative residual is within ``tol`` (with a floor of 100 machine epsilons).
    Products go through NumPy on the CPU. Needs ``k < n`` (use ``lanczos`` otherwise).
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh as _eigsh

    n = operator_info(A)[0]
    ncv = min(n, max(2 * k + 1, 20))
    # default: scipy's own (10·n restarts)
    n, dtype, device, which, max_iter = check_eigen_args(A, k, which, tol, max_iter, default_max_iter=10 * n * ncv)
    if k >= n:
        raise CurvatureError(f"k={k} must be smaller than the dimension n={n} for eigsh (use method='lanczos')")
    budget = max_iter - k  # ARPACK's share; the last k products measure the residuals
    if budget <= k:
        raise CurvatureError(
            f"max_iter={max_iter} is too small for eigsh with k={k}: ARPACK needs more than k products for its "
            f"basis, plus k to measure the residuals (max_iter >= {2 * k + 1}); raise max_iter or use "
            "method='lanczos'"
        )
    ncv = min(ncv, budget)
    count = [0]
    if hasattr(A, "as_linear_operator"):
        inner = A.as_linear_operator()
    else:
        def mv(x):
            t = torch.as_tensor(np.ascontiguousarray(x).reshape(-1), dtype=dtype, device=device)
            return (A @ t).double().cpu().numpy()

        inner = LinearOperator((n, n), matvec=mv, rmatvec=mv, dtype=np.float64)

    def counted(x):
        m = 1 if x.ndim == 1 or x.shape[1] == 1 else x.shape[1]
        if count[0] + m > budget:
            raise _OutOfProducts
        count[0] += m
        return inner.matvec(x)

    op = LinearOperator((n, n), matvec=counted, rmatvec=counted, dtype=inner.dtype)
    v0 = rademacher(n, 1, _generator(seed), torch.float64, torch.device("cpu"))[:, 0].numpy()
    arpack_ok = True
    try:  # restarts: at least one product each, so the product budget is what stops ARPACK
        vals, vecs = _eigsh(op, k=k, which=which, tol=tol, maxiter=budget, ncv=ncv, v0=v0)
    except _OutOfProducts:
        raise CurvatureError(
            f"eigsh (ARPACK) did not converge to k={k} eigenpairs within max_iter={max_iter} products "
            f"({count[0]} spent, {k} kept for the residuals); raise max_iter or use method='lanczos'"
        ) from None
    except ArpackNoConvergence as exc:
        arpack_ok = False
        vals, vecs = exc.eigenvalues, exc.eigenvectors
        if len(vals) < k:
            raise CurvatureError(
                f"eigsh (ARPACK) found only {len(vals)} of k={k} eigenpairs within max_iter={max_iter} products "
                f"({count[0]} spent); raise max_iter or use method='lanczos'"
            ) from None
    idx = _select(np.asarray(vals), k, which)
    vals, vecs = np.asarray(vals)[idx], np.asarray(vecs)[:, idx]
    V = torch.as_tensor(np.ascontiguousarray(vecs), dtype=dtype, device=device)
    V = V / torch.linalg.vector_norm(V, dim=0, keepdim=True)
    AV = torch.stack([A @ V[:, i] for i in range(k)], dim=1)
    res = torch.linalg.vector_norm(AV - V * torch.as_tensor(vals, dtype=dtype, device=device), dim=0).double().cpu()
    values = torch.tensor(vals, dtype=torch.float64)
    floor = 100 * torch.finfo(dtype).eps
    conv = arpack_ok and bool(torch.all(res <= max(float(tol), floor) * values.abs()))
    return Eigenpairs(
        values=values,
        vectors=V,
        residuals=res,
        n_matvecs=count[0] + k,
        method="eigsh",
        which=which,
        converged=conv,
        tol=float(tol),
    )
