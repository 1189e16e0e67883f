r"""Stochastic Lanczos quadrature (SLQ) of the spectral density (Ghorbani, Krishnan & Xiao 2019;
Lin, Saad & Yang 2016).

For each of ``n_runs`` normalised Rademacher start vectors u, ``n_steps`` Lanczos steps (full
reorthogonalization) give ``T = S Θ Sᵀ``; the Gauss quadrature nodes are the Ritz values
``θ_i`` and the weights ``w_i = S[0, i]²`` (Σ w_i = 1), so that ``Σ_i w_i f(θ_i) = uᵀ f(A) u``
exactly for polynomials f of degree < 2·n_steps, and ``E_u[uᵀ f(A) u] = tr f(A) / n``.
Negative eigenvalues (common at saddle points and in quantized students) need no special care.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from .lanczos import _tridiag_eig, lanczos_tridiagonal
from .operators import _generator, check_positive_int, operator_info, rademacher
from .results import SpectralDensity

__all__ = ["slq"]


def slq(A: Any, n_runs: int = 1, n_steps: int = 100, seed: int = 0, *, progress: bool = False) -> SpectralDensity:
    """Nodes and weights of ``n_runs`` SLQ runs of ``n_steps`` Lanczos steps each (capped at n).

    A run whose Krylov space is exhausted early (β ≈ 0) stops there: its quadrature is then exact.

    Example (the nodes of a full Krylov space are the eigenvalues)::

        >>> import torch
        >>> from landscape.curvature import slq
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> d = slq(A, n_runs=1, n_steps=3)
        >>> [round(float(x), 6) for x in d.nodes[0]]
        [1.0, 2.0, 3.0]
    """
    n, dtype, device = operator_info(A)
    check_positive_int(n_runs, "n_runs")
    check_positive_int(n_steps, "n_steps")
    gen = _generator(seed)
    nodes, weights = [], []
    n_mv = 0
    for _ in tqdm(range(n_runs), desc="SLQ runs", disable=not progress or n_runs == 1):
        v0 = rademacher(n, 1, gen, dtype, device)[:, 0]
        alpha, beta, _ = lanczos_tridiagonal(A, v0, n_steps)
        n_mv += len(alpha)
        theta, S = _tridiag_eig(alpha, beta)
        nodes.append(torch.as_tensor(theta, dtype=torch.float64))
        weights.append(torch.as_tensor(S[0, :] ** 2, dtype=torch.float64))
    return SpectralDensity(nodes=nodes, weights=weights, dim=n, n_matvecs=n_mv)
