r"""The estimators' front door: ``trace``, ``eigenpairs`` and ``density`` of any symmetric operator.

One way to reach every estimator: these free functions (and the ones they dispatch to:
:func:`~landscape.curvature.hutchinson.hutchinson`, :func:`~landscape.curvature.hutchpp.hutchpp`,
:func:`~landscape.curvature.power.power_iteration`, :func:`~landscape.curvature.lanczos.lanczos`,
:func:`~landscape.curvature.lanczos.eigsh`, :func:`~landscape.curvature.slq.slq`) are the
implementations; ``H.trace(...)``, ``H.eigenpairs(...)`` and ``H.density(...)`` on every
curvature operator are thin aliases of them, kept because they read well and are the public
contract. Free functions are the primary form because an estimator needs nothing of a model:
it works on anything with ``@`` and ``shape`` -- a Hessian, a GGN, a per-layer view, a dense
tensor, a user's own operator -- exactly like curvlinops' estimators.

One meaning per name, in every solver:

* ``tol``: the relative residual ``‖A v − λ v‖ / |λ|`` each returned eigenpair must reach;
* ``max_iter``: the most products with A one call may spend (``None``: the solver's default);
* ``rtol``: the relative standard error ``stderr / |value|`` a stochastic trace stops at;
* results carry ``converged`` and ``residual`` (how well the stopping rule was met) separately
  from ``stderr`` (the sampling uncertainty of a stochastic estimate).
"""

from __future__ import annotations

from typing import Any

from .operators import check_method
from .results import Eigenpairs, SpectralDensity, TraceEstimate

__all__ = ["trace", "eigenpairs", "density", "TRACE_METHODS", "EIGEN_METHODS"]

TRACE_METHODS = ("hutchinson", "hutch++")
EIGEN_METHODS = ("power", "lanczos", "eigsh")


def trace(A: Any, method: str = "hutchinson", max_matvecs: int = 100, rtol: float | None = None, seed: int = 0,
          **kwargs: Any) -> TraceEstimate:
    """Stochastic estimate of ``tr(A)`` by ``"hutchinson"`` or ``"hutch++"`` (see those functions)."""
    from .hutchinson import hutchinson
    from .hutchpp import hutchpp

    method = check_method(method, TRACE_METHODS)
    fn = hutchinson if method == "hutchinson" else hutchpp
    return fn(A, max_matvecs=max_matvecs, rtol=rtol, seed=seed, **kwargs)


def eigenpairs(A: Any, k: int = 1, method: str = "power", which: str = "LA", tol: float = 1e-3,
               max_iter: int | None = None, seed: int = 0, **kwargs: Any) -> Eigenpairs:
    """Top-``k`` eigenpairs by ``"power"`` (with deflation), ``"lanczos"`` or ``"eigsh"`` (scipy/ARPACK).

    Every method stops when each pair's relative residual ``‖A v − λ v‖/|λ|`` is at most ``tol``,
    or when ``max_iter`` products are spent (then ``converged`` is False).
    """
    from .lanczos import eigsh, lanczos
    from .power import power_iteration

    method = check_method(method, EIGEN_METHODS)
    fn = {"power": power_iteration, "lanczos": lanczos, "eigsh": eigsh}[method]
    return fn(A, k=k, which=which, tol=tol, max_iter=max_iter, seed=seed, **kwargs)


def density(A: Any, n_runs: int = 1, n_steps: int = 100, seed: int = 0, **kwargs: Any) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (see :func:`~landscape.curvature.slq.slq`)."""
    from .slq import slq

    return slq(A, n_runs=n_runs, n_steps=n_steps, seed=seed, **kwargs)
