r"""Flat gradients of the mean loss, and the cosine similarity of two losses' gradients.

``gradient`` returns ``∇_θ L`` with ``L = Σ_b n_b L_b / Σ_b n_b`` as one flat vector (the
layout of :class:`~landscape.curvature.Hessian` for the same ``params``).

``gradient_cosine`` compares two losses (CE vs KL in the AIT analysis):

    cos(g_a, g_b) = g_a · g_b / (‖g_a‖ ‖g_b‖),

for all selected parameters together (``layer="all"``) and per layer (a parameter's owning
module, e.g. ``"conv1"``). It returns the tidy rows of the analyzers' tables (one
implementation: :func:`~landscape.curvature.layers.cosine_rows`): ``metric="grad_norm"`` for
each loss and ``metric="cosine"`` with ``loss="a|b"``; the cosine of a zero gradient is NaN.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .attention import twice_differentiable
from .batches import as_batches, evaluate_loss, iterate, model_mode, reduce_over_batches, shard_failure
from .errors import CurvatureWarning
from .layers import cosine_rows, layer_slices
from .params import resolve_params
from .reduction import resolve_group

__all__ = ["gradient", "gradient_cosine"]


def gradient(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    params: Any = None,
    *,
    eval_mode: bool = True,
    return_loss: bool = False,
    process_group: Any = None,
) -> torch.Tensor | tuple[torch.Tensor, float]:
    """Flat gradient of the size-weighted mean loss (and the loss itself if ``return_loss``).

    No side effects: mode restored, ``.grad`` untouched. Parameters without a gradient get
    zeros and one :class:`CurvatureWarning`. ``process_group`` as for the operators (see
    :mod:`~landscape.curvature.reduction`): under ``torch.distributed`` the batches are this
    rank's shard and the gradient (and loss) is that of the mean over every rank's samples.
    """
    names, tensors = resolve_params(model, params)
    group = resolve_group(process_group)
    batches = as_batches(batches, allow_empty=group is not None)
    device, dtype = tensors[0].device, tensors[0].dtype
    n = sum(p.numel() for p in tensors)
    total = torch.zeros(n, dtype=dtype, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0.0
    unused: set[str] = set()
    n_ref = None
    with shard_failure(group) as failed, twice_differentiable(), torch.enable_grad(), model_mode(model, eval_mode):
        for i, batch, size in iterate(batches, device, allow_empty=group is not None):
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
    failure = failed[0] if failed else None
    unit = float(n_ref or 1)
    g = reduce_over_batches(total, count, unit=unit, group=group, what="a gradient", failure=failure)
    if return_loss:
        return g, float(reduce_over_batches(loss_sum, count, unit=unit, group=group, what="a mean loss"))
    return g


def gradient_cosine(
    model: nn.Module,
    loss_a: Callable[[nn.Module, Any], torch.Tensor],
    loss_b: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    params: Any = None,
    *,
    eval_mode: bool = True,
    per_layer: bool = True,
    names: tuple[str, str] | None = None,
    process_group: Any = None,
) -> list[dict[str, Any]]:
    """Tidy rows ``{"loss", "layer", "metric", "value"}`` comparing the gradients of two losses.

    ``names`` label the losses (default: their ``name`` attributes, e.g. ``"ce"`` and ``"kl"``,
    or ``"a"`` and ``"b"``). Rows: ``grad_norm`` of each loss (``layer="all"``), and ``cosine``
    with ``loss="<a>|<b>"`` for ``layer="all"`` and, with ``per_layer``, for every layer.
    ``process_group`` as for :func:`gradient` (both gradients are over every rank's samples).
    """
    if names is None:
        na, nb = getattr(loss_a, "name", "a"), getattr(loss_b, "name", "b")
        names = (na, nb) if isinstance(na, str) and isinstance(nb, str) and na != nb else ("a", "b")
    pnames, tensors = resolve_params(model, params)
    group = resolve_group(process_group)
    batches = as_batches(batches, allow_empty=group is not None)
    grads = {
        names[0]: gradient(model, loss_a, batches, tensors, eval_mode=eval_mode, process_group=False if group is None else group),
        names[1]: gradient(model, loss_b, batches, tensors, eval_mode=eval_mode, process_group=False if group is None else group),
    }
    sizes = {n: p.numel() for n, p in zip(pnames, tensors)}
    return cosine_rows(grads, layer_slices(sizes, pnames) if per_layer else None)
