"""The torch-side plumbing shared by the Hessian operator, gradients and slices.

* iterate the batches (a list, a DataLoader or any re-iterable), moving tensors to the
  parameters' device;
* evaluate ``loss_fn(model, batch)`` with one clear error for a non-scalar, NaN/inf or
  failing loss (naming the batch index);
* temporarily put the model in eval mode and restore every module's previous mode;
* :func:`reduce_over_batches`, the one place where per-batch sums become the mean over all
  batches (and where a ``torch.distributed`` ``all_reduce`` belongs when each rank holds a
  shard of the batches).

Batches are weighted by their size: with ``loss_fn`` returning the mean over its batch, the
mean over all samples is ``Σ_b n_b L_b / Σ_b n_b``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .errors import CurvatureError

__all__ = [
    "as_batches",
    "batch_size",
    "to_device",
    "evaluate_loss",
    "model_mode",
    "reduce_over_batches",
]

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def as_batches(batches: Any) -> Iterable[Any]:
    """Return a re-iterable of batches; a one-shot iterator is materialised into a list.

    A single ``(x, y)`` tuple of tensors is *not* accepted silently as a list of two batches:
    pass ``[(x, y)]``.
    """
    if batches is None:
        raise CurvatureError("batches is None: pass a list of (x, y) batches or a DataLoader")
    if isinstance(batches, torch.Tensor):
        raise CurvatureError("batches must be a list of batches (e.g. [(x, y)]), got a single tensor")
    if (
        isinstance(batches, tuple)
        and len(batches) == 2
        and all(isinstance(t, torch.Tensor) for t in batches)
    ):
        raise CurvatureError("batches looks like a single (x, y) batch: wrap it in a list, [(x, y)]")
    try:
        it = iter(batches)
    except TypeError:
        raise CurvatureError(f"batches must be iterable (a list or a DataLoader), got {type(batches).__name__}") from None
    if it is batches:  # generator / iterator: can only be walked once
        batches = list(it)
    if hasattr(batches, "__len__") and len(batches) == 0:
        raise CurvatureError("no batches: the batch list (or DataLoader) is empty")
    return batches


def batch_size(batch: Any) -> int:
    """Number of samples in a batch: the leading dimension of its first tensor."""
    t = batch
    while not isinstance(t, torch.Tensor):
        if isinstance(t, dict) and t:
            t = next(iter(t.values()))
        elif isinstance(t, (list, tuple)) and t:
            t = t[0]
        else:
            raise CurvatureError(f"cannot infer the size of a batch of type {type(batch).__name__}")
    return int(t.shape[0]) if t.dim() > 0 else 1


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``; dtypes are left alone."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, tuple):
        return tuple(to_device(b, device) for b in batch)
    if isinstance(batch, list):
        return [to_device(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def iterate(
    batches: Iterable[Any], device: torch.device, start: int = 0, allow_empty: bool = False
) -> Iterator[tuple[int, Any, int]]:
    """Yield ``(index, batch_on_device, size)``, indices counted from ``start``; raise if there were none."""
    n = 0
    for i, b in enumerate(batches, start=start):
        n += 1
        yield i, to_device(b, device), batch_size(b)
    if n == 0 and not allow_empty:
        raise CurvatureError("no batches: the batch list (or DataLoader) yielded nothing")


def evaluate_loss(loss_fn: LossFn, model: nn.Module, batch: Any, index: int, *, need_grad: bool = True) -> torch.Tensor:
    """``loss_fn(model, batch)`` checked to be a finite scalar tensor (errors name the batch)."""
    try:
        loss = loss_fn(model, batch)
    except CurvatureError:
        raise
    except Exception as exc:  # a user's loss failing deep inside torch: say where
        raise CurvatureError(f"loss_fn raised on batch {index}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loss, torch.Tensor):
        raise CurvatureError(f"loss_fn must return a tensor, got {type(loss).__name__} on batch {index}")
    if loss.numel() != 1:
        raise CurvatureError(
            f"loss_fn must return a scalar (the mean over the batch), got shape {tuple(loss.shape)} on batch {index}"
        )
    loss = loss.reshape(())
    if not bool(torch.isfinite(loss.detach())):
        raise CurvatureError(f"loss is {loss.item()} (not finite) on batch {index}")
    if need_grad and not loss.requires_grad:
        raise CurvatureError(
            f"loss on batch {index} does not depend on the selected parameters (no autograd graph); "
            "is it computed under torch.no_grad() or from detached outputs?"
        )
    return loss


@contextlib.contextmanager
def model_mode(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Temporarily ``model.eval()`` (if ``eval_mode``); afterwards restore every module's own
    mode and the values of any buffer the forward pass changed (e.g. BatchNorm running
    statistics with ``eval_mode=False``).

    Buffers are restored through ``.data`` so their autograd version counters are not bumped: a
    retained graph stays usable (running statistics are not used by a train-mode backward).
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    if eval_mode:
        model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape == saved.shape and not torch.equal(b, saved):
                    b.data.copy_(saved)


def reduce_over_batches(total: torch.Tensor, count: float) -> torch.Tensor:
    """Turn a size-weighted sum over batches into the mean: ``total / count``.

    ``total`` is ``Σ_b w_b · q_b`` for the batches this process saw and ``count`` is ``Σ_b w_b``.
    This is the single reduction point of the engine: for data-parallel analysis (each
    ``torchrun`` rank holding a shard of the batches) an ``all_reduce`` of ``total`` and
    ``count`` goes here, and nothing else changes.
    """
    if count <= 0:
        raise CurvatureError("no batches: nothing to average over")
    return total / count
