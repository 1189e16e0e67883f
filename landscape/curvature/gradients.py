r"""Flat gradients of the mean loss, and the cosine similarity of two losses' gradients.

``gradient`` returns ``∇_θ L`` with ``L = Σ_b n_b L_b / Σ_b n_b`` as one flat vector (the
layout of :class:`~landscape.curvature.Hessian` for the same ``params``).

``gradient_cosine`` compares two losses (CE vs KL in the AIT analysis):

    cos(g_a, g_b) = g_a · g_b / (‖g_a‖ ‖g_b‖),

for all selected parameters together (``layer="all"``) and per layer (a parameter's owning
module, e.g. ``"conv1"``). It returns tidy rows ``{"layer", "metric", "value"}`` with metrics
``"cosine"``, ``"norm_a"`` and ``"norm_b"``; the cosine of a zero gradient is NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .batches import as_batches, evaluate_loss, iterate, model_mode, reduce_over_batches
from .errors import CurvatureWarning
from .params import layer_of, resolve_params

__all__ = ["gradient", "gradient_cosine"]


def gradient(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    params: Any = None,
    *,
    eval_mode: bool = True,
    return_loss: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, float]:
    """Flat gradient of the size-weighted mean loss (and the loss itself if ``return_loss``).

    No side effects: mode restored, ``.grad`` untouched. Parameters without a gradient get
    zeros and one :class:`CurvatureWarning`.
    """
    names, tensors = resolve_params(model, params)
    batches = as_batches(batches)
    device, dtype = tensors[0].device, tensors[0].dtype
    n = sum(p.numel() for p in tensors)
    total = torch.zeros(n, dtype=dtype, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0.0
    unused: set[str] = set()
    n_ref = None
    with torch.enable_grad(), model_mode(model, eval_mode):
        for i, batch, size in iterate(batches, device):
            n_ref = n_ref or size
            w = size / n_ref
            loss = evaluate_loss(loss_fn, model, batch, i)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            offset = 0
            for name, p, g in zip(names, tensors, grads):
                if g is None:
                    unused.add(name)
                else:
                    total[offset : offset + p.numel()] += w * g.reshape(-1).to(dtype)
                offset += p.numel()
            loss_sum += w * loss.detach().double()
            count += w
    if unused:
        warnings.warn(
            f"{len(unused)} parameter(s) receive no gradient from the loss (zero gradient): {sorted(unused)}",
            CurvatureWarning,
            stacklevel=2,
        )
    g = reduce_over_batches(total, count)
    if return_loss:
        return g, float(reduce_over_batches(loss_sum, count))
    return g


def _cos(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    na = float(torch.linalg.vector_norm(a))
    nb = float(torch.linalg.vector_norm(b))
    cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan
    return cos, na, nb


def gradient_cosine(
    model: nn.Module,
    loss_a: Callable[[nn.Module, Any], torch.Tensor],
    loss_b: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    params: Any = None,
    *,
    eval_mode: bool = True,
    per_layer: bool = True,
) -> list[dict[str, Any]]:
    """Tidy rows of the gradient cosine similarity of ``loss_a`` and ``loss_b``, whole model and per layer."""
    names, tensors = resolve_params(model, params)
    batches = as_batches(batches)
    ga = gradient(model, loss_a, batches, tensors, eval_mode=eval_mode)
    gb = gradient(model, loss_b, batches, tensors, eval_mode=eval_mode)
    rows: list[dict[str, Any]] = []

    def emit(layer: str, a: torch.Tensor, b: torch.Tensor) -> None:
        cos, na, nb = _cos(a, b)
        rows.append({"layer": layer, "metric": "cosine", "value": cos})
        rows.append({"layer": layer, "metric": "norm_a", "value": na})
        rows.append({"layer": layer, "metric": "norm_b", "value": nb})

    emit("all", ga, gb)
    if per_layer:
        spans: dict[str, list[tuple[int, int]]] = {}
        offset = 0
        for name, p in zip(names, tensors):
            spans.setdefault(layer_of(name), []).append((offset, offset + p.numel()))
            offset += p.numel()
        for layer, sl in spans.items():
            a = torch.cat([ga[s:e] for s, e in sl])
            b = torch.cat([gb[s:e] for s, e in sl])
            emit(layer, a, b)
    return rows
