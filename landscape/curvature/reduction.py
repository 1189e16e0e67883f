r"""Which ranks a mean over batches spans: the engine's side of ``torch.distributed``.

When a process group is initialized (``torchrun`` + ``torch.distributed.init_process_group``),
each rank holds a *shard* of the batches and every mean over batches -- a curvature product,
a gradient, a mean loss -- is the mean over the union of the shards:

    mean = Σ_r Σ_{b ∈ shard r} n_b q_b  /  Σ_r Σ_{b ∈ shard r} n_b,

one ``all_reduce`` (sum) of the rank's size-weighted sum and sample count, done in
:func:`~landscape.curvature.batches.reduce_over_batches` and nowhere else. Every rank then
holds the same numbers, so every estimator built on them (Hutchinson, Hutch++, power,
Lanczos, SLQ, slices, cosines) draws the same probes from the same seed and returns the same
result on every rank. Shards may be uneven (more or bigger batches on one rank, or none).

Which group, chosen by the keyword ``process_group`` of the operators and functions:

* ``None`` (default): the default group when ``torch.distributed`` is initialized with more
  than one rank, else no reduction;
* ``False``: no reduction: this rank's batches are all the batches (e.g. each rank analyses
  its own checkpoint);
* a ``ProcessGroup`` (``torch.distributed.new_group(...)``): reduce over that group only.

The group is always the caller's argument: no hidden state changes what ``None`` means (code
that builds operators for another caller -- the analyzers' :class:`~landscape.analyzers.Point`
-- carries the group and passes it on).

A rank whose local part fails (a NaN loss on one of its batches, a loss that raises) still
joins the reduction with a failure flag, so that every rank stops with an error naming the
failing rank and its message instead of waiting for it; the failing rank raises its own error.
A rank that never reaches the reduction (it died, or raised elsewhere) is reported by the
process group's timeout as a :class:`ReductionError` on the others.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import CurvatureError

__all__ = ["ReductionError", "resolve_group", "default_process_group", "group_rank", "all_reduce_mean"]

class ReductionError(CurvatureError, RuntimeError):
    """A mean over the ranks' shards could not be formed: another rank failed, died or timed out."""


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def resolve_group(process_group: Any = None) -> Any:
    """The group a reduction spans, or ``None`` for none (see the module docstring).

    ``None`` means the world group when initialized with more than one rank; ``False`` no
    reduction; a ``ProcessGroup`` itself. A group of one rank reduces nothing and gives ``None``.
    """
    if process_group is None:
        if not _initialized():
            return None
        process_group = torch.distributed.group.WORLD
    if process_group is False:
        return None
    if process_group is True or not _is_group(process_group):
        raise CurvatureError(
            f"process_group must be None (the default group when torch.distributed is initialized), False (no "
            f"reduction over ranks) or a torch.distributed ProcessGroup, got {process_group!r}"
        )
    if not _initialized():
        raise CurvatureError("process_group was given but torch.distributed is not initialized: call "
                             "torch.distributed.init_process_group (or landscape.distributed.init()) first")
    return None if torch.distributed.get_world_size(process_group) <= 1 else process_group


def _is_group(obj: Any) -> bool:
    return torch.distributed.is_available() and isinstance(obj, torch.distributed.ProcessGroup)


def default_process_group(process_group: Any = None) -> None:
    """Removed after 0.2: it changed what ``process_group=None`` means for every operator
    built inside a ``with`` block, through module state. Pass ``process_group=`` to the operator or
    function instead; calling this raises a :class:`CurvatureError` that says so."""
    raise CurvatureError(
        "landscape.curvature.default_process_group was removed: pass process_group=False (this rank's batches "
        "alone) or a ProcessGroup to the operator or function itself, e.g. Hessian(model, loss_fn, batches, "
        "process_group=False)"
    )


def group_rank(group: Any) -> int:
    """This process's rank in ``group`` (0 without a group)."""
    return 0 if group is None else torch.distributed.get_rank(group)


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def all_reduce_mean(total: torch.Tensor, samples: float, group: Any, what: str,
                    failure: BaseException | None = None) -> torch.Tensor:
    """``Σ_r total_r / Σ_r samples_r`` over ``group``, with one ``all_reduce``.

    ``total`` is this rank's sample-weighted sum (its shape is the same on every rank), ``samples``
    its sample count; ``failure`` the exception this rank met while computing them (it then
    joins with zeros and a flag, and every rank raises). Every rank gets the same result.
    """
    dtype = total.dtype if total.dtype in (torch.float32, torch.float64) else torch.float32
    n = total.numel()
    buf = torch.zeros(n + 2, dtype=dtype, device=total.device)
    if failure is None:
        buf[:n] = total.reshape(-1)
        buf[n] = samples
    else:
        buf[n + 1] = 1.0
    rank, world = torch.distributed.get_rank(group), torch.distributed.get_world_size(group)
    try:
        torch.distributed.all_reduce(buf, group=group)
    except RuntimeError as exc:  # a peer died, or did not come within the group's timeout
        raise ReductionError(
            f"rank {rank} of {world}: the all-reduce of {what} failed: another rank stopped or did not reach it "
            f"within the process group's timeout (its own error is printed by that rank); {_message(exc)}"
        ) from (failure or exc)
    if float(buf[n + 1]) > 0:
        messages: list[Any] = [None] * world
        torch.distributed.all_gather_object(messages, None if failure is None else _message(failure), group=group)
        if failure is not None:
            raise failure
        bad = [(r, m) for r, m in enumerate(messages) if m is not None]
        names = ", ".join(f"rank {r}: {m}" for r, m in bad)
        raise ReductionError(f"rank {rank} of {world}: {what} stopped because {names}; every rank stops here")
    count = float(buf[n])
    if count <= 0:
        raise CurvatureError("no batches on any rank: nothing to average over")
    return (buf[:n] / count).to(total.dtype).view_as(total)
