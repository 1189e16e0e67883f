r"""Hutchinson's stochastic trace estimator with Rademacher probes.

Hutchinson (1989): for ``z`` with independent ±1 entries, ``E[zᵀ A z] = tr(A)`` and

    Var[zᵀ A z] = 2 (‖A‖_F² − Σᵢ A_ii²).

With m probes the estimate is the sample mean ``t̂ = (1/m) Σ_i z_iᵀ A z_i`` and its standard
error is the sample standard deviation over √m. Works for any symmetric operator with ``@``
and ``shape`` (not only Hessians).

Stopping rule (``rtol``): after at least ``min_matvecs`` probes, stop as soon as
``stderr / |t̂| < rtol``; never exceed ``max_matvecs``. Unlike a rule on the change of the
running mean (PyHessian), this bounds the estimate's own uncertainty. ``converged`` is True
only when that rule stopped it: without ``rtol`` (a fixed number of probes) or when the cap
came first, it is False -- a budget is not convergence; ``stderr`` says how good it is.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import CurvatureError
from .operators import _generator, check_positive_int, matmat, operator_info, rademacher
from .results import TraceEstimate

__all__ = ["hutchinson"]

#: Probes per ``A @ Z`` call (a block shares graph construction for un-cached Hessians). Fixed,
#: not a parameter: the probes are drawn block by block, so the block changes the numbers.
BLOCK = 10


def _stderr(samples: list[float]) -> float:
    m = len(samples)
    if m < 2:
        return math.inf
    mean = sum(samples) / m
    var = sum((s - mean) ** 2 for s in samples) / (m - 1)
    return math.sqrt(var / m)


def hutchinson(
    A: Any,
    max_matvecs: int = 100,
    rtol: float | None = None,
    seed: int = 0,
    *,
    min_matvecs: int = 10,
) -> TraceEstimate:
    """Estimate ``tr(A)``.

    Parameters
    ----------
    A : operator with ``@`` and ``shape``
    max_matvecs : number of probes (products) when ``rtol`` is None, else the maximum.
    rtol : optional relative-standard-error target: stop when ``stderr/|value| < rtol``.
    seed : seed of the probes (drawn on the CPU, so identical on every device).
    min_matvecs : probes taken before the ``rtol`` rule may stop (so the variance is estimated).
    """
    n, dtype, device = operator_info(A)
    check_positive_int(max_matvecs, "max_matvecs")
    if rtol is not None and not (isinstance(rtol, (int, float)) and rtol > 0):
        raise CurvatureError(f"rtol must be a positive number or None, got {rtol!r}")
    gen = _generator(seed)
    samples: list[float] = []
    converged = False  # only the rtol rule converges: a cap (or a fixed budget) alone does not
    while len(samples) < max_matvecs:
        b = min(BLOCK, max_matvecs - len(samples))
        if rtol is not None and len(samples) < min_matvecs:
            b = min(b, min_matvecs - len(samples)) or b
        Z = rademacher(n, b, gen, dtype, device)
        AZ = matmat(A, Z)
        samples.extend((Z * AZ).sum(dim=0).double().cpu().tolist())
        if rtol is not None and len(samples) >= min_matvecs:
            mean = sum(samples) / len(samples)
            if _stderr(samples) < rtol * abs(mean):
                converged = True
                break
    m = len(samples)
    return TraceEstimate(
        value=sum(samples) / m,
        stderr=_stderr(samples),
        n_matvecs=m,
        method="hutchinson",
        converged=converged,
        samples=tuple(samples),
    )
