"""Result objects returned by the estimators: one array type (torch tensors), short ``repr``s.

* :class:`TraceEstimate`: ``value``, ``stderr``, ``n_matvecs``, ``converged``, ``residual``.
* :class:`Eigenpairs`: ``values`` (largest first), unit ``vectors`` (columns), ``residuals``
  ``‖A v − λ v‖``, ``residual`` (the largest relative residual, the quantity ``tol`` bounds),
  ``converged``, ``n_matvecs``. It unpacks as ``values, vectors = pairs``.
* :class:`SpectralDensity`: SLQ ``nodes`` and ``weights`` per run (1-D float64 tensors), with
  :meth:`SpectralDensity.evaluate` (Gaussian-smoothed density on a grid) and
  :meth:`SpectralDensity.moments`.

Every result says how well its stopping rule was met (``converged``, ``residual``) separately
from its sampling uncertainty (``stderr``); where a quantity does not apply it is NaN and the
docstring says why. Arrays are torch tensors (call ``.numpy()`` on them for NumPy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import CurvatureError

__all__ = ["TraceEstimate", "Eigenpairs", "SpectralDensity"]


def _fmt(x: float) -> str:
    return f"{x:.6g}"


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate ``value ± stderr`` from ``n_matvecs`` operator products.

    ``converged``: the ``rtol`` rule (``stderr/|value| < rtol``) was met. False when no ``rtol``
    was asked (a fixed number of probes) or ``max_matvecs`` came first: a cap is not convergence. ``residual``: NaN -- a trace estimate has no residual; its uncertainty is ``stderr``.
    ``samples`` holds the per-probe quantities the standard error was computed from (for
    Hutchinson ``zᵢᵀ A zᵢ``; for Hutch++ the residual-part probes, see :func:`hutchpp`).
    """

    value: float
    stderr: float
    n_matvecs: int
    method: str = "hutchinson"
    converged: bool = True
    samples: tuple[float, ...] = field(default=(), repr=False)
    residual: float = math.nan

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return (
            f"TraceEstimate(value={_fmt(self.value)}, stderr={_fmt(self.stderr)}, n_matvecs={self.n_matvecs}, "
            f"method={self.method!r}, converged={self.converged})"
        )


@dataclass(frozen=True)
class Eigenpairs:
    """Eigenpairs ``A vᵢ ≈ λᵢ vᵢ``, largest first (algebraic for ``which="LA"``, magnitude for ``"LM"``).

    ``values``: 1-D float64 CPU tensor; ``vectors``: ``(n, k)`` tensor of unit columns on the
    operator's device and dtype; ``residuals``: 1-D float64 CPU tensor of ``‖A vᵢ − λᵢ vᵢ‖``
    (measured, or for Lanczos its exact-arithmetic estimate ``|β_j sᵢ[j]|``).
    ``converged``: every pair met ``‖A vᵢ − λᵢ vᵢ‖ ≤ tol·|λᵢ|`` within ``max_iter`` products.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    n_matvecs: int
    method: str = "power"
    which: str = "LA"
    converged: bool = True
    tol: float = math.nan

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.values
        yield self.vectors

    def __len__(self) -> int:
        return 2

    @property
    def relative_residuals(self) -> torch.Tensor:
        """``‖A vᵢ − λᵢ vᵢ‖ / |λᵢ|`` per pair (the quantity ``tol`` bounds)."""
        return self.residuals / self.values.abs().clamp_min(1e-300)

    @property
    def residual(self) -> float:
        """The largest relative residual over the pairs (NaN if there are none)."""
        r = self.relative_residuals
        return float(r.max()) if r.numel() else math.nan

    def __repr__(self) -> str:
        vals = ", ".join(_fmt(float(v)) for v in self.values[:6])
        more = ", ..." if len(self.values) > 6 else ""
        return (
            f"Eigenpairs(values=[{vals}{more}], vectors={tuple(self.vectors.shape)}, residual={_fmt(self.residual)}, "
            f"converged={self.converged}, n_matvecs={self.n_matvecs}, method={self.method!r}, which={self.which!r})"
        )


@dataclass(frozen=True, repr=False)
class SpectralDensity:
    r"""Stochastic Lanczos quadrature of the spectral density of a symmetric ``n × n`` operator.

    For run ``r`` with unit start vector ``u_r``, Lanczos gives nodes ``θ_{r,i}`` (Ritz values)
    and weights ``w_{r,i}`` (squared first components of the Ritz vectors) such that
    ``Σ_i w_{r,i} f(θ_{r,i}) ≈ u_rᵀ f(A) u_r``, exact for polynomials of degree < 2·n_steps.
    With Rademacher ``u_r`` (normalised), ``E[u_rᵀ f(A) u_r] = tr f(A) / n``, so

        φ(x) = (1/R) Σ_r Σ_i w_{r,i} 𝒩(x; θ_{r,i}, σ²)

    estimates the density ``(1/n) Σ_j δ(x − λ_j)`` smoothed by a Gaussian of width σ.
    ``nodes`` and ``weights`` are lists (one 1-D float64 tensor per run; a run may be shorter
    than ``n_steps`` when its Krylov space is exhausted). ``converged`` is True (SLQ has no
    stopping rule: it runs the steps asked) and ``residual`` NaN (not applicable).
    """

    nodes: list[torch.Tensor]
    weights: list[torch.Tensor]
    dim: int
    n_matvecs: int = 0
    converged: bool = True
    residual: float = math.nan

    @property
    def n_runs(self) -> int:
        return len(self.nodes)

    def moments(self, j: int) -> float:
        r"""Estimate of ``tr(A^j)/n``: ``(1/R) Σ_r Σ_i w_{r,i} θ_{r,i}^j`` (exact quadrature for j < 2·n_steps)."""
        return float(sum(float((w * t**j).sum()) for t, w in zip(self.nodes, self.weights)) / self.n_runs)

    @property
    def spectral_range(self) -> tuple[float, float]:
        all_nodes = torch.cat(self.nodes)
        return float(all_nodes.min()), float(all_nodes.max())

    def default_sigma(self) -> float:
        """σ = 1 % of the spectral range (or 1e-3·max(1, |λ|) if the range is degenerate)."""
        lo, hi = self.spectral_range
        width = hi - lo
        return 0.01 * width if width > 0 else 1e-3 * max(1.0, abs(hi))

    def grid(self, n_points: int = 1000, sigma: float | None = None) -> torch.Tensor:
        """An evenly spaced float64 grid covering the nodes, padded by 5σ on each side."""
        s = self.default_sigma() if sigma is None else float(sigma)
        lo, hi = self.spectral_range
        return torch.linspace(lo - 5 * s, hi + 5 * s, int(n_points), dtype=torch.float64)

    def evaluate(self, grid: Sequence[float] | np.ndarray | torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """The Gaussian-smoothed density φ on ``grid`` as a float64 tensor (integrates to ≈ 1)."""
        s = self.default_sigma() if sigma is None else float(sigma)
        if not s > 0:
            raise CurvatureError(f"sigma must be > 0, got {sigma!r}")
        x = torch.as_tensor(np.asarray(grid.cpu() if isinstance(grid, torch.Tensor) else grid, dtype=np.float64))
        x = x.reshape(-1)
        out = torch.zeros_like(x)
        norm = 1.0 / (s * math.sqrt(2 * math.pi))
        for t, w in zip(self.nodes, self.weights):
            out += (w[None, :] * torch.exp(-0.5 * ((x[:, None] - t[None, :]) / s) ** 2)).sum(dim=1)
        return out * norm / max(1, self.n_runs)

    def __repr__(self) -> str:
        lo, hi = self.spectral_range
        steps = max(len(t) for t in self.nodes)
        return (
            f"SpectralDensity(dim={self.dim}, n_runs={self.n_runs}, n_steps={steps}, "
            f"range=[{_fmt(lo)}, {_fmt(hi)}], n_matvecs={self.n_matvecs})"
        )
