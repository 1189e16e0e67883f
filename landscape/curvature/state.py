r"""Has the model changed since a graph was built? One exact answer, for every kind of change.

A cached first-order graph holds references to the parameters' storage, not copies of their
values: if the values change behind autograd's back, later products silently mix the old
graph with the new values. Tensor version counters catch optimizer-style in-place updates
and ``load_state_dict``, but not writes through ``.data`` (``p.data.mul_(…)``), which share
storage under a fresh version counter.

:class:`StateTracker` therefore keeps, for every parameter and floating-point buffer of the
model (and of any ``nn.Module`` the loss holds, e.g. a distillation teacher):

* its identity, layout and version counter (the tensor object, storage pointer, dtype,
  device, shape, ``_version``): catches re-assignment (``p.data = t``,
  ``vector_to_parameters``, ``model.to(…)``), replaced modules, ``load_state_dict`` and any
  in-place write through autograd (even one that writes the same values, which would make a
  cached graph raise);
* a snapshot of its values, compared exactly (``torch.equal``) on every check: catches every
  write, through ``.data`` or not, including BatchNorm running statistics.

The snapshot costs one copy of the model's state in memory and one read of it per check;
``make bench`` prints the check's time as a fraction of a Hessian-vector product. Counters
(integer buffers such as BatchNorm's ``num_batches_tracked``, which a train-mode forward
increments and which no forward output depends on) are left out.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

__all__ = ["StateTracker", "tracked_modules"]


def tracked_modules(model: nn.Module, loss_fn: Any) -> list[tuple[str, nn.Module]]:
    """The model and every ``nn.Module`` the loss object holds as an attribute (e.g. ``teacher``)."""
    out = [("model", model)]
    for key, value in sorted(vars(loss_fn).items()) if hasattr(loss_fn, "__dict__") else []:
        if isinstance(value, nn.Module) and value is not model:
            out.append((f"loss_fn.{key}", value))
    return out


def _is_counter(name: str, t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex()) and name.endswith("num_batches_tracked")


def _entries(modules: Iterable[tuple[str, nn.Module]]) -> list[tuple[str, torch.Tensor]]:
    out = []
    for prefix, m in modules:
        for name, p in m.named_parameters():
            out.append((f"{prefix}.{name}", p))
        for name, b in m.named_buffers():
            if not _is_counter(name, b):
                out.append((f"{prefix}.{name}", b))
    return out


def _values_changed(current: list[tuple[str, torch.Tensor]], saved: list[torch.Tensor]) -> str | None:
    """Name of the first tensor whose values differ from its snapshot (exact comparison).

    CPU tensors are compared through NumPy (a memcmp-speed scan, free of the thread-pool
    latency of small torch ops); others with one device reduction per tensor and a single
    synchronisation for all of them.
    """
    other = []
    with torch.no_grad():
        for (name, t), old in zip(current, saved):
            if t.device.type == "cpu" and t.dtype not in (torch.bfloat16,) and not t.is_complex():
                try:
                    if not np.array_equal(t.detach().numpy(), old.numpy()):
                        return name
                    continue
                except (TypeError, RuntimeError):
                    pass
            other.append((name, t, old))
        if other:
            flags = torch.stack([torch.ne(t, old).any() for _, t, old in other])
            if bool(flags.any()):
                return other[int(flags.nonzero()[0, 0])][0]
    return None


def _layout(t: torch.Tensor) -> tuple:
    ptr = t.data_ptr() if t.device.type != "meta" else 0
    return (id(t), ptr, t._version, t.dtype, t.device, tuple(t.shape), t.stride())


class StateTracker:
    """Snapshot of a set of modules' parameters and buffers; :meth:`changed` says whether they moved."""

    def __init__(self, modules: list[tuple[str, nn.Module]]):
        self.modules = modules
        self._names: list[str] = []
        self._layouts: list[tuple] = []
        self._values: list[torch.Tensor] = []

    def snapshot(self) -> None:
        """Record the current state (call right after building a graph from it)."""
        entries = _entries(self.modules)
        self._names = [n for n, _ in entries]
        self._layouts = [_layout(t) for _, t in entries]
        with torch.no_grad():
            self._values = [t.detach().clone() for _, t in entries]

    def refresh_versions(self) -> None:
        """Re-record the version counters after the operator's own forward passes (a train-mode
        BatchNorm bumps its running statistics' counters; their values are restored by
        :func:`~landscape.curvature.batches.model_mode`)."""
        entries = _entries(self.modules)
        if len(entries) == len(self._layouts):
            self._layouts = [_layout(t) for _, t in entries]

    def clear(self) -> None:
        self._names, self._layouts, self._values = [], [], []

    def changed(self) -> str | None:
        """``None`` if nothing changed since :meth:`snapshot`, else the name of the first change."""
        entries = _entries(self.modules)
        if len(entries) != len(self._names):
            return "the set of parameters and buffers"
        for (name, t), old_name, layout in zip(entries, self._names, self._layouts):
            if name != old_name or _layout(t) != layout:
                return name
        return _values_changed(entries, self._values)
