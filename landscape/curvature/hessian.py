r"""The Hessian of a model's mean loss as a linear operator.

For parameters θ (the selected ``params``, flattened in order) and batches b of sizes n_b,

    L(θ) = Σ_b n_b L_b(θ) / Σ_b n_b,        H = ∇²L(θ) = Σ_b n_b ∇²L_b(θ) / Σ_b n_b,

and ``H @ v`` is computed exactly by double backward (reverse-over-reverse):
``H_b v = ∇_θ (∇_θ L_b(θ) · v)``. The first-order graph ``g_b = ∇_θ L_b`` (built with
``create_graph=True``) does not depend on v, so it is built once per batch and reused by
every product while it fits in memory (:mod:`~landscape.curvature.graph_cache`): one
product then costs one backward pass through the first-order graph, not a forward and two
backward passes. A diagonal block (:meth:`~CurvatureOperator.restrict`, :meth:`layers`),
``H_SS v_S = ∇_{θ_S} (g_S · v_S)``, uses the same graph.

Everything else -- freshness after any change of the model, batch checks, views, side
effects (none), estimators -- is described in :mod:`landscape.curvature.base`.

Example (against the exact matrix)::

    >>> import torch
    >>> from landscape.curvature import Hessian
    >>> lin = torch.nn.Linear(3, 1).double()
    >>> x = torch.randn(8, 3, dtype=torch.float64)
    >>> loss = lambda m, b: (m(b[0]) ** 2).mean()
    >>> H = Hessian(lin, loss, [(x, None)])
    >>> X1 = torch.cat([x, torch.ones(8, 1, dtype=torch.float64)], 1)
    >>> torch.allclose(H.dense(), 2 * X1.T @ X1 / 8)
    True
"""

from __future__ import annotations

from typing import Any

import torch

from .base import CurvatureOperator
from .batches import evaluate_loss, model_mode

__all__ = ["Hessian"]


class _Graph:
    """The first-order graph of one batch: per parameter, its gradient that still carries a graph."""

    __slots__ = ("grads",)

    def __init__(self, grads: list[torch.Tensor | None]):
        self.grads = grads


class Hessian(CurvatureOperator):
    __doc__ = (
        "Hessian ``∇²L`` of the size-weighted mean of ``loss_fn(model, batch)`` over ``batches``.\n"
        + CurvatureOperator.__doc__.split("\n", 2)[2]
    )
    kind = "hessian"
    _what = "the Hessian"

    def _build(self, index: int, batch: Any, weight: float, select: list[int] | None) -> _Graph:
        core = self._core
        sel = list(range(len(core.params))) if select is None else list(select)
        with torch.enable_grad(), model_mode(core.model, core.eval_mode):
            loss = evaluate_loss(core.loss_fn, core.model, batch, index)
            return _Graph(self._graph_of_gradients(loss, sel))

    def _products(self, item: _Graph, cols: list[list[torch.Tensor]], out: torch.Tensor, weight: float,
                  retain: bool) -> None:
        targets = self._targets(item.grads)
        if targets is None:
            return
        sel, rows, inputs = targets
        outputs = [g for _, g in sel]
        for j, parts in enumerate(cols):
            gouts = [parts[k] if weight == 1.0 else parts[k] * weight for k, _ in sel]
            res = torch.autograd.grad(
                outputs, inputs, grad_outputs=gouts, retain_graph=retain or j < len(cols) - 1, allow_unused=True
            )
            self._add_rows(out[j], rows, res)
