"""The torch-side plumbing shared by the Hessian operator, gradients and slices.

* iterate the batches (a list, a DataLoader or any re-iterable), moving tensors to the
  parameters' device;
* evaluate ``loss_fn(model, batch)`` with one clear error for a non-scalar, NaN/inf or
  failing loss (naming the batch index);
* temporarily put the model in eval mode and restore every module's previous mode;
* :class:`BatchSource`, the batches as every pass of an operator sees them: a zero-sample
  batch is an error, and a loader that does not give the same batches on every pass
  (``shuffle=True``, random augmentation) is detected by a per-batch fingerprint and refused;
* :func:`reduce_over_batches`, the one place where per-batch sums become the mean over all
  batches (and where a ``torch.distributed`` ``all_reduce`` belongs when each rank holds a
  shard of the batches). Hessian, GGN and Fisher products, gradients and losses all go
  through it.

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
    "BatchSource",
    "as_batches",
    "batch_size",
    "to_device",
    "evaluate_loss",
    "model_mode",
    "reduce_over_batches",
    "shard_failure",
]

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def as_batches(batches: Any, allow_empty: bool = False) -> Iterable[Any]:
    """Return a re-iterable of batches; a one-shot iterator is materialised into a list.

    A single ``(x, y)`` tuple of tensors is *not* accepted silently as a list of two batches:
    pass ``[(x, y)]``. An empty list is an error unless ``allow_empty`` (a rank's empty shard).
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
    if hasattr(batches, "__len__") and len(batches) == 0 and not allow_empty:
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
    """Yield ``(index, batch_on_device, size)``, indices counted from ``start``; raise if there were
    none, or if a batch has zero samples."""
    n = 0
    for i, b in enumerate(batches, start=start):
        n += 1
        size = batch_size(b)
        if size == 0:
            raise CurvatureError(
                f"batch {i} has zero samples: the mean loss over it is undefined; drop empty batches "
                "(e.g. DataLoader(..., drop_last=True) or filter the list)"
            )
        yield i, to_device(b, device), size
    if n == 0 and not allow_empty:
        raise CurvatureError("no batches: the batch list (or DataLoader) yielded nothing")


def _fingerprint(batch: Any) -> tuple:
    """A cheap, order-of-samples-invariant summary of a batch: shapes, Σx and Σx² of each tensor.

    Invariant to a permutation *within* a batch (which changes no mean loss), different for
    another set of samples or for randomly augmented samples.
    """
    out: list = []

    def walk(b: Any) -> None:
        if isinstance(b, torch.Tensor):
            t = b.detach()
            if t.is_floating_point() or t.is_complex():
                t64 = t.to(torch.float64)
            else:
                t64 = t.to(torch.float64) if t.numel() else t.double()
            out.append((tuple(t.shape), float(t64.sum()), float((t64 * t64).sum())))
        elif isinstance(b, (list, tuple)):
            for x in b:
                walk(x)
        elif isinstance(b, dict):
            for k in sorted(b, key=str):
                walk(b[k])
        else:
            out.append(repr(type(b)))

    walk(batch)
    return tuple(out)


def _same(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, tuple) and isinstance(y, tuple):
            if x[0] != y[0]:
                return False
            for u, w in zip(x[1:], y[1:]):
                if abs(u - w) > 1e-9 * max(abs(u), abs(w), 1e-300):
                    return False
        elif x != y:
            return False
    return True


class BatchSource:
    """The batches of an operator, walked once per pass, checked to be the same on every pass.

    A list (or tuple) of batches is used as is. A one-shot iterator (a generator) is
    materialised into a list once. Any other re-iterable (a ``DataLoader``) is walked anew on
    every pass; the first pass records a fingerprint of each batch (shapes, Σx, Σx² of every
    tensor) and every later pass is compared with it, batch by batch. A loader with
    ``shuffle=True`` or random augmentation therefore fails on its second pass with one clear
    :class:`CurvatureError` -- whichever part of the graph is cached -- instead of silently
    mixing two different data sets into one product. The fix it names: ``list(loader)``
    (materialised once) or a loader without shuffling/augmentation.

    (curvlinops checks determinism once, at construction, by two extra passes; this check costs
    nothing extra and holds for every pass, including those after a rebuild.)
    """

    def __init__(self, batches: Any, allow_empty: bool = False):
        self.allow_empty = allow_empty
        self.batches = as_batches(batches, allow_empty)
        self.fixed = isinstance(self.batches, (list, tuple))
        self._prints: list[tuple] | None = None
        self._n_total: int | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def passes(self, device: torch.device, start: int = 0) -> Iterator[tuple[int, Any, int]]:
        """One pass, yielding ``(index, batch_on_device, size)`` for the batches from ``start`` on.

        For a re-iterable loader the batches before ``start`` are still drawn and fingerprinted
        (not moved, not evaluated), so that a reshuffled loader is caught there too.
        """
        if self.fixed:
            yield from iterate(self.batches if start == 0 else self.batches[start:], device, start=start,
                               allow_empty=start > 0 or self.allow_empty)
            return
        prints = self._prints if self._prints is not None else []
        first = self._prints is None
        if first:
            self._prints = prints
        n = 0
        for i, raw in enumerate(self.batches):
            n = i + 1
            fp = _fingerprint(raw)
            if i < len(prints):
                if not _same(fp, prints[i]):
                    raise self._changed(i)
            elif self._n_total is not None:  # more batches than a complete earlier pass
                raise self._changed(i)
            else:
                prints.append(fp)
            if i >= start:
                yield from iterate([raw], device, start=i)
        if self._n_total is None:
            self._n_total = n
        elif n != self._n_total:
            raise self._changed(n)
        if n == 0 and start == 0 and not self.allow_empty:
            raise CurvatureError("no batches: the batch list (or DataLoader) yielded nothing")

    def _changed(self, index: int) -> CurvatureError:
        return CurvatureError(
            f"the batches changed between two passes (batch {index} differs from the first pass): "
            "the loader shuffles or augments at random, so products would mix different data. "
            "Pass a fixed list instead (batches = list(loader), materialised once) or a loader with "
            "shuffle=False and no random augmentation"
        )


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


def reduce_over_batches(total: torch.Tensor, count: float, *, unit: float = 1.0, group: Any = None,
                        what: str = "a mean over batches", failure: BaseException | None = None) -> torch.Tensor:
    """Turn a size-weighted sum over batches into the mean: ``total / count``.

    ``total`` is ``Σ_b w_b · q_b`` for the batches this process saw and ``count`` is ``Σ_b w_b``,
    with weights ``w_b = n_b / unit`` (``unit``: the size the weights are relative to, e.g. the
    first batch's). This is the single reduction point of the engine. Without a ``group`` it is
    ``total / count``. With a ``group`` (a resolved ``torch.distributed`` group, see
    :mod:`~landscape.curvature.reduction`) each rank holds a shard of the batches and the mean is
    over all of them,

        Σ_r unit_r · total_r / Σ_r unit_r · count_r       (one all_reduce),

    so uneven shards are weighted by their samples; ``failure`` (an exception this rank met
    while forming its sums) makes every rank stop with an error naming it instead of waiting.
    """
    if group is None:
        if failure is not None:
            raise failure
        if count <= 0:
            raise CurvatureError("no batches: nothing to average over")
        return total / count
    from .reduction import all_reduce_mean

    scaled = total if unit == 1.0 else total * unit
    return all_reduce_mean(scaled, count * unit, group, what, failure)


@contextlib.contextmanager
def shard_failure(group: Any) -> Iterator[list]:
    """Catch an exception of this rank's local sums when reducing over ``group``, so that it can
    be handed to :func:`reduce_over_batches` (which makes every rank raise); without a group the
    exception propagates at once. Yields a list that holds the exception, if any."""
    caught: list = []
    if group is None:
        yield caught
        return
    try:
        yield caught
    except Exception as exc:  # noqa: BLE001 - re-raised by reduce_over_batches on this rank
        caught.append(exc)
