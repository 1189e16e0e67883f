r"""Loss along directions: 1-D slices ``L(θ + k·d)``, 2-D surfaces ``L(θ + a·d₁ + b·d₂)``, and
filter-normalised random directions (Li, Xu, Taylor, Studer & Goldstein, "Visualizing the
Loss Landscape of Neural Nets", NeurIPS 2018).

Filter normalisation: draw ``d ~ 𝒩(0, I)`` shaped like each parameter; for a weight with
``dim ≥ 2`` rescale each filter (slice along the output dimension 0) so that
``‖d_i‖ = ‖θ_i‖``; 1-D parameters (biases, BatchNorm) get ``d = 0`` (Li et al.'s
``ignore="biasbn"`` setting), since their scale is not comparable.

The parameters are set to ``θ + k·d`` (computed afresh from a saved copy of θ for every k, so
no error accumulates) and restored *bit for bit* afterwards, also on error.

Which function a slice shows (quantized models): through an identity straight-through
estimator, the Hessian the engine reports is that of the *float* network evaluated at the
quantized weights with the rounding offsets held fixed -- a smooth function of θ. A plain slice
re-quantizes the weights at every k: it is the deployed model's loss, a piecewise-constant
function of k whose second differences do not converge to that curvature. Pass
``context=lambda: frozen_rounding(model, batches)`` (from the quantization code) to freeze the
offsets at θ for the whole slice: that slice is the function whose Hessian is reported, and
near k = 0 it follows ½λk² along an eigenvector.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from torch import nn

from .attention import twice_differentiable
from .batches import as_batches, evaluate_loss, iterate, model_mode, reduce_over_batches, shard_failure
from .errors import CurvatureError
from .operators import _generator
from .params import resolve_params
from .reduction import resolve_group

__all__ = ["loss_slice", "loss_surface", "random_direction", "mean_loss"]


def random_direction(model: nn.Module, params: Any = None, filter_normalize: bool = True, seed: int = 0) -> torch.Tensor:
    """A random flat direction (drawn on the CPU from ``seed``), filter-normalised by default."""
    _, tensors = resolve_params(model, params)
    gen = _generator(seed)
    parts = []
    for p in tensors:
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if filter_normalize:
            w = p.detach().to("cpu", torch.float64)
            if p.dim() <= 1:
                d = torch.zeros_like(d)
            else:
                dn = d.reshape(d.shape[0], -1).norm(dim=1)
                wn = w.reshape(w.shape[0], -1).norm(dim=1)
                scale = wn / dn.clamp_min(1e-30)
                d = d * scale.reshape(-1, *([1] * (d.dim() - 1)))
        parts.append(d.reshape(-1))
    return torch.cat(parts).to(device=tensors[0].device, dtype=tensors[0].dtype)


def _check_direction(d: Any, n: int, like: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(d, torch.Tensor):
        raise CurvatureError(f"{what} must be a torch.Tensor, got {type(d).__name__}")
    if d.dim() != 1 or d.shape[0] != n:
        raise CurvatureError(f"{what} must be a 1-D tensor of length {n}, got shape {tuple(d.shape)}")
    if d.dtype != like.dtype:
        raise CurvatureError(f"{what} must have dtype {like.dtype} (the parameters'), got {d.dtype}")
    if d.device != like.device:
        raise CurvatureError(f"{what} must be on {like.device} (the parameters' device), got {d.device}")
    return d.detach()


def mean_loss(model: nn.Module, loss_fn: Callable, batches: Iterable[Any], *, eval_mode: bool = True,
              process_group: Any = None) -> float:
    """Size-weighted mean of ``loss_fn`` over the batches, without gradients.

    ``process_group`` as for the operators: under ``torch.distributed`` the batches are this
    rank's shard and the mean is over every rank's samples (the same number on every rank).
    """
    device = next(model.parameters()).device
    group = resolve_group(process_group)
    total = torch.zeros((), dtype=torch.float64, device=device if group is not None else "cpu")
    count = 0.0
    with shard_failure(group) as failed, twice_differentiable(), torch.no_grad(), model_mode(model, eval_mode):
        for i, batch, size in iterate(batches, device, allow_empty=group is not None):
            total += size * float(evaluate_loss(loss_fn, model, batch, i, need_grad=False))
            count += size
    return float(reduce_over_batches(total, count, group=group, what="a mean loss",
                                     failure=failed[0] if failed else None))


Context = Callable[[], ContextManager[Any]]


def _grid(model, loss_fn, batches, params, directions, coords, eval_mode, context: Context | None,
          process_group: Any = None) -> torch.Tensor:
    _, tensors = resolve_params(model, params)
    group = resolve_group(process_group)
    batches = as_batches(batches, allow_empty=group is not None)
    n = sum(p.numel() for p in tensors)
    dirs = [_check_direction(d, n, tensors[0], f"direction {i + 1}") for i, d in enumerate(directions)]
    if context is not None and not callable(context):
        raise CurvatureError(
            f"context must be a zero-argument callable returning a context manager (e.g. lambda: frozen_rounding(model, "
            f"batches)), got {type(context).__name__}"
        )
    saved = [p.detach().clone() for p in tensors]
    offsets = [0]
    for p in tensors:
        offsets.append(offsets[-1] + p.numel())
    out = torch.empty(len(coords), dtype=torch.float64)
    # entered once while the parameters are at θ, exited after they are restored
    with context() if context is not None else contextlib.nullcontext():
        try:
            for idx, ks in enumerate(coords):
                with torch.no_grad():
                    for j, (p, p0) in enumerate(zip(tensors, saved)):
                        new = p0.clone()
                        for k, d in zip(ks, dirs):
                            new.add_(d[offsets[j] : offsets[j + 1]].view_as(p0), alpha=float(k))
                        p.copy_(new)
                out[idx] = mean_loss(model, loss_fn, batches, eval_mode=eval_mode,
                                     process_group=False if group is None else group)
        finally:
            with torch.no_grad():
                for p, p0 in zip(tensors, saved):
                    p.copy_(p0)
    return out


def loss_slice(
    model: nn.Module,
    loss_fn: Callable,
    batches: Iterable[Any],
    direction: torch.Tensor,
    ks: Sequence[float],
    params: Any = None,
    *,
    eval_mode: bool = True,
    context: Context | None = None,
    process_group: Any = None,
) -> torch.Tensor:
    """``[L(θ + k·d) for k in ks]`` (mean loss over the batches) as a 1-D float64 tensor.

    ``process_group`` as for :func:`mean_loss` (every point is the mean over every rank's samples).

    ``context``: optional zero-argument callable returning a context manager, entered once while
    the parameters are still at θ (before any move) and exited after they are restored -- e.g.
    ``lambda: landscape.quant.frozen_rounding(model, batches)`` to evaluate the slice with the
    rounding offsets frozen at θ. Through an identity STE the Hessian is that of the float network
    at the quantized weights with the rounding offsets held fixed; that frozen slice is the
    function it describes. Without a context, a quantized model re-quantizes at every k (the
    deployed model's loss: piecewise constant in k). See the module docstring.
    """
    ks = [float(k) for k in ks]
    return _grid(model, loss_fn, batches, params, [direction], [(k,) for k in ks], eval_mode, context, process_group)


def loss_surface(
    model: nn.Module,
    loss_fn: Callable,
    batches: Iterable[Any],
    d1: torch.Tensor,
    d2: torch.Tensor,
    ks1: Sequence[float],
    ks2: Sequence[float],
    params: Any = None,
    *,
    eval_mode: bool = True,
    context: Context | None = None,
    process_group: Any = None,
) -> torch.Tensor:
    """``L(θ + a·d₁ + b·d₂)`` on the grid ``ks1 × ks2``: a float64 tensor of shape ``(len(ks1), len(ks2))``.

    ``context`` and ``process_group`` as in :func:`loss_slice` (the context is entered once at θ,
    exited after the restore).
    """
    ks1 = [float(k) for k in ks1]
    ks2 = [float(k) for k in ks2]
    flat = _grid(model, loss_fn, batches, params, [d1, d2], [(a, b) for a in ks1 for b in ks2], eval_mode, context,
                 process_group)
    return flat.reshape(len(ks1), len(ks2))
