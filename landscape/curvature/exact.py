"""Has a tensor's content changed since it was copied? Bit for bit, at memory speed.

The freshness checks (:mod:`~landscape.curvature.state` for the model and the loss,
:mod:`~landscape.curvature.batch_state` for the batches) keep a copy of every watched tensor,
because a write through ``.data`` (or a NumPy view) moves no version counter, and compare it
with the tensor before every product. The comparison is of the bytes, so it is exact: a NaN
equals itself, ``-0.0`` differs from ``0.0``. On the CPU a contiguous tensor is compared with
the C library's ``memcmp`` (one read of each, no temporary; 2-6x NumPy's ``array_equal``,
whose ``a == b`` writes a temporary as large as the tensor), another through NumPy; on a
device with one reduction per tensor and a single synchronisation for all.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch

__all__ = ["copy_of", "first_changed", "layout"]

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _libc_memcmp() -> Any:
    try:
        f = ctypes.CDLL(None).memcmp
    except (OSError, AttributeError, TypeError):  # no C library to take the symbol from (Windows): NumPy
        return None
    f.argtypes, f.restype = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t), ctypes.c_int
    return f


_MEMCMP = _libc_memcmp()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as integers of the same size (so ``==`` compares bits)."""
    t = t.detach()
    kind = _BITS.get(t.element_size())
    try:
        return t.view(kind) if kind is not None and t.dtype != kind else t
    except RuntimeError:  # a layout that cannot be viewed (sparse): compared as it is
        return t


def layout(t: torch.Tensor) -> tuple:
    """Where and how a tensor is stored, and its autograd version counter: ``(storage pointer, version,
    dtype, device, shape, stride)``. Equal layouts and :func:`first_changed` saying nothing mean the same tensor
    state; the freshness checks compare this first (cheap) and the bytes after."""
    ptr = t.data_ptr() if t.device.type != "meta" else 0
    return (ptr, t._version, t.dtype, t.device, tuple(t.shape), t.stride())


def copy_of(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of the tensor's values (as it is, for a layout without a contiguous form)."""
    try:
        return t.detach().clone(memory_format=torch.contiguous_format)
    except RuntimeError:
        return t.detach().clone()


def first_changed(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> int | None:
    """Index of the first ``(tensor, copy)`` whose values differ bit for bit, else ``None``. The copy is
    :func:`copy_of` the tensor, of the same shape and dtype (the callers compare layouts first)."""
    other = []
    with torch.no_grad():
        for i, (t, old) in enumerate(pairs):
            if t.shape != old.shape or t.dtype != old.dtype:
                return i
            if t.device.type == "cpu":
                if _MEMCMP is not None and t.layout == torch.strided and t.is_contiguous():
                    if t.numel() and _MEMCMP(t.data_ptr(), old.data_ptr(), t.numel() * t.element_size()):
                        return i
                    continue
                try:
                    if not np.array_equal(_bits(t).numpy(), _bits(old).numpy()):
                        return i
                    continue
                except (TypeError, RuntimeError):  # a conjugate or negative view, a sparse tensor
                    pass
            other.append((i, t, old))
        if other:
            flags = torch.stack([torch.ne(_bits(t), _bits(old)).any() for _, t, old in other])
            if bool(flags.any()):
                return other[int(flags.nonzero()[0, 0])][0]
    return None
