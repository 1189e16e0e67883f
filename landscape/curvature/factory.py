"""Choose a curvature matrix by name: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.

For settings such as an analysis's ``curvature = "hessian" | "ggn"``::

    A = curvature_operator("ggn", model, loss_fn, batches, params=None)
    A.trace(), A.eigenpairs(k=1), A.density(), A.layers()
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from .base import CurvatureOperator
from .ggn import GGN, EmpiricalFisher, Fisher
from .hessian import Hessian
from .operators import check_method

__all__ = ["CURVATURES", "curvature_operator"]

CURVATURES = {"hessian": Hessian, "ggn": GGN, "fisher": Fisher, "empirical_fisher": EmpiricalFisher}


def curvature_operator(kind: str, model: nn.Module, loss_fn: Any, batches: Iterable[Any], params: Any = None,
                       **kwargs: Any) -> CurvatureOperator:
    """``Hessian``, ``GGN``, ``Fisher`` or ``EmpiricalFisher`` (by ``kind``) with the given arguments."""
    kind = check_method(kind, tuple(CURVATURES), "curvature")
    return CURVATURES[kind](model, loss_fn, batches, params, **kwargs)
