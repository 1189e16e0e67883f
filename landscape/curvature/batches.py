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
import math
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
    if isinstance(batches, dict):
        raise CurvatureError("batches is a single dict batch: wrap it in a list, [batch]")
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
    """Number of samples in a batch: the leading dimension of its first tensor (of a dict batch:
    of ``input_ids`` if it has them, else of its first tensor value)."""
    t = batch
    while not isinstance(t, torch.Tensor):
        if isinstance(t, dict) and t:
            tensors = [v for v in t.values() if isinstance(v, torch.Tensor)]
            t = t["input_ids"] if isinstance(t.get("input_ids"), torch.Tensor) else (tensors or list(t.values()))[0]
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


_PROBE_SEED = 0x5EED_F1A9
_MAX_PROBES = 64
_probes: dict[tuple[int, str], torch.Tensor] = {}


def _probe(numel: int, device: torch.device) -> torch.Tensor:
    """A fixed pseudo-random float64 vector of length ``numel`` (standard normal entries).

    A deterministic function of ``numel`` alone (its own seeded generator, drawn on the CPU), so
    every pass -- and every process -- sees the same one; cached per ``(numel, device)``. The
    cache holds a few vectors (one per per-sample shape: inputs, labels, ...); when it overflows
    it is emptied, which is safe because a vector drawn again is the same vector.
    """
    key = (numel, str(device))
    w = _probes.get(key)
    if w is None:
        if len(_probes) >= _MAX_PROBES:
            _probes.clear()
        g = torch.Generator().manual_seed(_PROBE_SEED + numel)
        w = torch.randn(numel, generator=g, dtype=torch.float64).to(device)
        _probes[key] = w
    return w


def _fingerprint(batch: Any) -> tuple:
    """A cheap summary of a batch, sensitive to every value and to its position within a sample.

    For each tensor ``t`` of the (nested) batch, read as ``B`` samples ``x_i`` (its leading
    dimension; a 0-d tensor is one sample), the entry is its shape and dtype and

    * ``Σx`` and ``Σx²`` over all elements;
    * ``Σ_i p_i`` and ``Σ_i p_i²`` of the projections ``p_i = ⟨x_i, w⟩`` of each sample on a fixed
      pseudo-random vector ``w`` (:func:`_probe`, one per per-sample size): unlike the sums these
      change when values move *within* a sample (a random flip or crop, a permuted channel);

    and, per batch size ``B``, ``Σ_i s_i²`` with ``s_i`` the sum of sample i's projections over
    all tensors of that size, which ties inputs to their labels (re-pairing them changes it).

    Every statistic is symmetric in the samples, so a permutation of the samples *within* a batch
    (which changes no mean loss) keeps the fingerprint; another set of samples, or samples
    augmented at random, changes it. Cost: one read of the batch (a cast to float64, two
    reductions and one matrix-vector product), a fraction of a millisecond for an MNIST batch.

    Each statistic is stored with a scale that bounds it (Cauchy-Schwarz), which
    :func:`_same` uses as the yardstick of its relative tolerance.
    """
    out: list = []
    joint: dict[int, torch.Tensor] = {}

    def walk(b: Any) -> None:
        if isinstance(b, torch.Tensor):
            t = b.detach()
            if t.layout != torch.strided:
                t = t.to_dense()
            if t.is_complex():
                t = torch.view_as_real(t)
            n = t.shape[0] if t.dim() > 0 else 1
            X = t.reshape(n, -1).to(torch.float64)
            flat = X.reshape(-1)
            s1 = float(flat.sum())
            s2 = float(torch.dot(flat, flat)) if flat.numel() else 0.0
            p = X @ _probe(X.shape[1], X.device) if X.numel() else X.new_zeros(n)
            p1, p2 = float(p.sum()), float(torch.dot(p, p))
            joint[n] = p if n not in joint else joint[n] + p
            stats = (s1, s2, p1, p2)
            scales = ((flat.numel() * s2) ** 0.5, s2, (n * p2) ** 0.5, p2)
            out.append(("tensor", tuple(b.shape), str(b.dtype), stats, scales))
        elif isinstance(b, (list, tuple)):
            for x in b:
                walk(x)
        elif isinstance(b, dict):
            for k in sorted(b, key=str):
                walk(b[k])
        elif b is None or isinstance(b, (bool, int, float, str, bytes)):
            out.append(("value", type(b).__name__, b))
        else:
            out.append(("object", repr(type(b))))

    walk(batch)
    for n in sorted(joint):
        s = joint[n]
        q = float(torch.dot(s, s))
        out.append(("joint", n, (q,), (q,)))
    return tuple(out)


def _same(a: tuple, b: tuple, rtol: float = 1e-9) -> bool:
    """Whether two fingerprints agree: the same structure, each statistic within ``rtol`` of its scale."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x[0] != y[0]:
            return False
        if x[0] in ("tensor", "joint"):
            if x[:-2] != y[:-2]:
                return False
            for u, w, su, sw in zip(x[-2], y[-2], x[-1], y[-1]):
                if u == w or (math.isnan(u) and math.isnan(w)):
                    continue
                if not abs(u - w) <= rtol * max(su, sw):
                    return False
        elif x != y:
            return False
    return True


class BatchSource:
    """The batches of an operator, walked once per pass, checked to be the same on every pass.

    A list (or tuple) of batches is used as is. A one-shot iterator (a generator) is
    materialised into a list once. Any other re-iterable (a ``DataLoader``) is walked anew on
    every pass; the first pass records a fingerprint of each batch (:func:`_fingerprint`: shapes,
    sums, and projections of every sample on a fixed pseudo-random vector, so that values moved
    within a sample -- a random flip or crop -- count too) and every later pass is compared with
    it, batch by batch. A loader with ``shuffle=True`` or random augmentation (noise, flips,
    crops) therefore fails on its second pass with one clear :class:`CurvatureError` --
    whichever part of the graph is cached -- instead of silently mixing two different data sets
    into one product. The fix it names: ``list(loader)``
    (materialised once) or a loader without shuffling/augmentation.

    (curvlinops checks determinism once, at construction, by two extra passes; this check costs
    one read of each batch, no extra pass, and holds for every pass, including those after a
    rebuild.)
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
