r"""A drop-in for PyHessian 0.1 users, backed by the landscape curvature engine.

Switch one import::

    # from pyhessian import hessian
    from landscape.compat.pyhessian import hessian

    hessian_comp = hessian(model, criterion, data=(inputs, targets), cuda=False)   # or dataloader=...
    top_eigenvalues, top_eigenvectors = hessian_comp.eigenvalues(top_n=2)
    trace = hessian_comp.trace()                       # a list of vᵀHv; np.mean(trace) as before
    density_eigen, density_weight = hessian_comp.density()

Same constructor, methods and return structures as ``pyhessian.hessian``; what differs:

* **Numbers**: the same Hessian-vector products (exact double backward, batches of a
  ``dataloader`` weighted by size, as in PyHessian). ``eigenvalues`` runs Lanczos and stops on
  the relative residual ``‖Hv − λv‖ ≤ tol·|λ|`` (PyHessian's power iteration stops when λ changes
  by less than ``tol``, which does not bound its error: at its defaults it is typically off by
  1e-3–1e-2); ``maxIter`` stays the budget per eigenvalue. Where PyHessian is right the numbers
  agree; where it is not, these are the accurate ones.
* **trace** returns PyHessian's list of per-probe values ``zᵢᵀ H zᵢ`` (Rademacher zᵢ), so
  ``np.mean(trace)`` works as before, as a :class:`TraceSamples` list that also carries
  ``.value`` (the mean), ``.stderr`` (sample standard deviation / √m), ``.n_matvecs`` and
  ``.converged``. ``tol`` is the relative standard error at which it stops (after at least 10
  probes, at most ``maxIter``), not PyHessian's change of the running mean.
* **density** works on torch 2 (PyHessian 0.1 calls the removed ``torch.eig``): stochastic
  Lanczos quadrature with full reorthogonalization; returns ``(eigen_list_full,
  weight_list_full)``, ``n_v`` lists of ``iter`` Ritz values and weights (shorter when the
  Krylov space is exhausted).
* **No side effects**: the model's train/eval modes, its ``.grad`` and its parameters are left
  as they were (PyHessian puts the model in eval mode for good and leaves graphs in ``.grad``).
  The Hessian is that of the model in eval mode, as in PyHessian.
* ``cuda``: accepted for compatibility; the data go to the device of the model's parameters.
* Random vectors come from torch's global generator (``torch.manual_seed`` controls them, as
  in PyHessian), through a seed drawn once per call.
* ``hessian_comp.H`` is the underlying :class:`~landscape.curvature.Hessian`, for everything
  else (Hutch++, per-layer views, the GGN with the same data).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
from torch import nn

from landscape.curvature import CurvatureError, CurvatureWarning, Hessian, hutchinson, lanczos, slq

__all__ = ["hessian", "TraceSamples"]


class _CriterionLoss:
    """``loss_fn(model, (x, y)) = criterion(model(x), y)``, split at the outputs like landscape's losses."""

    name = "criterion"

    def __init__(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.criterion = criterion

    def outputs(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(batch[0])

    def on_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.criterion(outputs, batch[1])

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.on_outputs(self.outputs(model, batch), batch)

    def __repr__(self) -> str:
        return f"criterion({self.criterion!r})"


class TraceSamples(list):
    """PyHessian's list of per-probe ``zᵀHz`` values, plus the estimate and its standard error."""

    value: float
    stderr: float
    n_matvecs: int
    converged: bool

    def __repr__(self) -> str:
        return (f"TraceSamples(value={self.value:.6g}, stderr={self.stderr:.6g}, n_matvecs={self.n_matvecs}, "
                f"converged={self.converged})")


def _seed() -> int:
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


class hessian:  # noqa: N801 -- PyHessian's name
    """PyHessian's ``hessian(model, criterion, data=None, dataloader=None, cuda=True)`` (see the module)."""

    def __init__(self, model: nn.Module, criterion: Callable, data: Any = None, dataloader: Any = None,
                 cuda: bool = True):
        if (data is None) == (dataloader is None):
            raise CurvatureError("pass exactly one of data=(inputs, targets) or dataloader=...")
        self.model = model
        self.criterion = criterion
        self.full_dataset = dataloader is not None
        self.data = dataloader if self.full_dataset else data
        self.cuda = bool(cuda)
        batches = dataloader if self.full_dataset else [tuple(data)]
        self.H = Hessian(model, _CriterionLoss(criterion), batches)
        self.params = self.H.params
        self.device = str(self.H.device)

    def _unflat(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [t.clone() for t in self.H.split(v)]

    def dataloader_hv_product(self, v: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        """``(vᵀHv, Hv)`` for v given per parameter, as PyHessian's (over all the data)."""
        flat = torch.cat([t.reshape(-1) for t in v]).to(self.H.dtype)
        Hv = self.H @ flat
        return float(flat @ Hv), self._unflat(Hv)

    def eigenvalues(self, maxIter: int = 100, tol: float = 1e-3, top_n: int = 1
                    ) -> tuple[list[float], list[list[torch.Tensor]]]:  # noqa: N803
        """Top ``top_n`` eigenvalues (largest first) and eigenvectors (per-parameter lists)."""
        pairs = lanczos(self.H, k=top_n, tol=tol, max_iter=maxIter * top_n, seed=_seed())
        if not pairs.converged:  # PyHessian's return structure has no place for it: say so here
            warnings.warn(
                f"eigenvalues: Lanczos did not reach the relative residual tol={tol} within maxIter={maxIter} "
                f"products per eigenvalue (residuals {[float(r) for r in pairs.residuals]}); raise maxIter",
                CurvatureWarning,
                stacklevel=2,
            )
        values = [float(x) for x in pairs.values]
        vectors = [self._unflat(pairs.vectors[:, i]) for i in range(top_n)]
        return values, vectors

    def trace(self, maxIter: int = 100, tol: float = 1e-3) -> TraceSamples:  # noqa: N803
        """Hutchinson's per-probe values ``zᵢᵀHzᵢ`` with the estimate and its standard error attached."""
        est = hutchinson(self.H, max_matvecs=maxIter, rtol=tol, seed=_seed(), min_matvecs=min(10, maxIter))
        out = TraceSamples(est.samples)
        out.value, out.stderr, out.n_matvecs, out.converged = est.value, est.stderr, est.n_matvecs, est.converged
        if math.isinf(out.stderr):
            out.stderr = math.nan
        return out

    def density(self, iter: int = 100, n_v: int = 1) -> tuple[list[list[float]], list[list[float]]]:  # noqa: A002
        """SLQ: ``n_v`` lists of Ritz values and of their weights (each list's weights sum to 1)."""
        dens = slq(self.H, n_runs=n_v, n_steps=iter, seed=_seed())
        return [t.tolist() for t in dens.nodes], [w.tolist() for w in dens.weights]
