"""Result objects returned by the estimators.

* :class:`TraceEstimate`: ``value``, ``stderr``, ``n_matvecs``.
* :class:`Eigenpairs`: ``values`` (largest first), unit ``vectors`` (columns), ``residuals``
  ``‖A v − λ v‖``, ``n_matvecs``. It unpacks as ``values, vectors = pairs``.
* :class:`SpectralDensity`: SLQ ``nodes`` and ``weights`` per run, with
  :meth:`SpectralDensity.evaluate` (Gaussian-smoothed density on a grid) and
  :meth:`SpectralDensity.moments`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["TraceEstimate", "Eigenpairs", "SpectralDensity"]


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate ``value ± stderr`` from ``n_matvecs`` operator products.

    ``samples`` holds the per-probe quantities the standard error was computed from (for
    Hutchinson ``zᵢᵀ A zᵢ``; for Hutch++ the residual-part probes, see :func:`hutchpp`).
    """

    value: float
    stderr: float
    n_matvecs: int
    method: str = "hutchinson"
    converged: bool = True
    samples: tuple[float, ...] = field(default=(), repr=False)

    def __float__(self) -> float:
        return float(self.value)


@dataclass(frozen=True)
class Eigenpairs:
    """Eigenpairs ``A vᵢ ≈ λᵢ vᵢ``, largest first (algebraic for ``which="LA"``, magnitude for ``"LM"``).

    ``values``: 1-D float64 CPU tensor; ``vectors``: ``(n, k)`` tensor of unit columns on the
    operator's device and dtype; ``residuals``: 1-D float64 CPU tensor of ``‖A vᵢ − λᵢ vᵢ‖``.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    n_matvecs: int
    method: str = "power"
    which: str = "LA"
    converged: bool = True

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.values
        yield self.vectors

    def __len__(self) -> int:
        return 2


@dataclass(frozen=True)
class SpectralDensity:
    r"""Stochastic Lanczos quadrature of the spectral density of a symmetric ``n × n`` operator.

    For run ``r`` with unit start vector ``u_r``, Lanczos gives nodes ``θ_{r,i}`` (Ritz values)
    and weights ``w_{r,i}`` (squared first components of the Ritz vectors) such that
    ``Σ_i w_{r,i} f(θ_{r,i}) ≈ u_rᵀ f(A) u_r``, exact for polynomials of degree < 2·n_steps.
    With Rademacher ``u_r`` (normalised), ``E[u_rᵀ f(A) u_r] = tr f(A) / n``, so

        φ(x) = (1/R) Σ_r Σ_i w_{r,i} 𝒩(x; θ_{r,i}, σ²)

    estimates the density ``(1/n) Σ_j δ(x − λ_j)`` smoothed by a Gaussian of width σ.
    ``nodes`` and ``weights`` are lists (one 1-D float64 array per run; a run may be shorter
    than ``n_steps`` when its Krylov space is exhausted).
    """

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    dim: int
    n_matvecs: int = 0

    @property
    def n_runs(self) -> int:
        return len(self.nodes)

    def moments(self, j: int) -> float:
        r"""Estimate of ``tr(A^j)/n``: ``(1/R) Σ_r Σ_i w_{r,i} θ_{r,i}^j`` (exact quadrature for j < 2·n_steps)."""
        return float(np.mean([np.sum(w * t ** j) for t, w in zip(self.nodes, self.weights)]))

    @property
    def spectral_range(self) -> tuple[float, float]:
        all_nodes = np.concatenate(self.nodes)
        return float(all_nodes.min()), float(all_nodes.max())

    def default_sigma(self) -> float:
        """σ = 1 % of the spectral range (or 1e-3·max(1, |λ|) if the range is degenerate)."""
        lo, hi = self.spectral_range
        width = hi - lo
        return 0.01 * width if width > 0 else 1e-3 * max(1.0, abs(hi))

    def grid(self, n_points: int = 1000, sigma: float | None = None) -> np.ndarray:
        """An evenly spaced grid covering the nodes, padded by 5σ on each side."""
        s = self.default_sigma() if sigma is None else float(sigma)
        lo, hi = self.spectral_range
        return np.linspace(lo - 5 * s, hi + 5 * s, int(n_points))

    def evaluate(self, grid: Sequence[float] | np.ndarray | torch.Tensor, sigma: float | None = None) -> np.ndarray:
        """The Gaussian-smoothed density φ on ``grid`` (integrates to ≈ 1; negative nodes fine)."""
        s = self.default_sigma() if sigma is None else float(sigma)
        if not s > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        x = np.asarray(grid.cpu() if isinstance(grid, torch.Tensor) else grid, dtype=np.float64).reshape(-1)
        out = np.zeros_like(x)
        norm = 1.0 / (s * math.sqrt(2 * math.pi))
        for t, w in zip(self.nodes, self.weights):
            out += (w[None, :] * np.exp(-0.5 * ((x[:, None] - t[None, :]) / s) ** 2)).sum(axis=1)
        return out * norm / max(1, self.n_runs)
