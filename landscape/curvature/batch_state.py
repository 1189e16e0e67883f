r"""Have the batches changed since a graph was built from them? The batches' half of "never stale".

A cached graph holds the batch it was built from: after ``bs[0][0].mul_(3)``, ``bs[1] = other``
or ``bs.append(b)`` a product through the cached graphs would answer for the old data (or mix
the two). :class:`BatchWatch` records, for a list or tuple of batches, at the moment the graphs
are built:

* the **structure**: the list's length and, recursively through every tuple, list and dict of
  every batch, each item's identity (``is``) -- a replaced, added or removed batch, or a
  replaced tensor inside one (``batch[0] = x2``, ``d["labels"] = y2``), counts; plain values
  (ints, strings, ``None``) inside a batch are compared by value;
* every **tensor**'s layout (storage pointer, dtype, device, shape, stride, autograd version
  counter, ``requires_grad``: any in-place write through autograd, ``mul_``, ``copy_``,
  ``y[3] = 7``) and its values, compared bit for bit with a copy taken at the snapshot
  (:mod:`~landscape.curvature.exact`; catches writes that bypass the version counter:
  ``x.data.mul_(3)``, a NumPy view written in place).

Like the model's :class:`~landscape.curvature.state.StateTracker`, the snapshot costs one copy
of the batches (small beside the cached graphs built from them) and a check one exact
comparison with it (``memcmp`` on the CPU). Not watched: a ``DataLoader``'s dataset (a
loader is re-read and fingerprinted on every pass it makes -- see
:class:`~landscape.curvature.batches.BatchSource` -- but with every graph cached no pass is made:
build a new operator, or pass a list), and objects inside a batch that are neither containers,
tensors nor plain values.
"""

from __future__ import annotations

from typing import Any

import torch

from .exact import copy_of, first_changed, layout

__all__ = ["BatchWatch"]

_PLAIN = (bool, int, float, complex, str, bytes, type(None))


def _layout(t: torch.Tensor) -> tuple:
    return (*layout(t), t.requires_grad)


class BatchWatch:
    """Snapshot of a fixed list (or tuple) of batches; :meth:`changed` says what moved since.

    >>> import torch
    >>> bs = [(torch.ones(2, 3), torch.tensor([0, 1]))]
    >>> w = BatchWatch(bs); w.snapshot(); w.changed() is None
    True
    >>> _ = bs[0][0].mul_(3); w.changed()
    'batch 0, tensor 0 (written in place)'
    """

    def __init__(self, batches: Any):
        self.batches = batches
        self._refs: list[Any] | None = None
        self._tensors: list[tuple[tuple, torch.Tensor]] = []  # (layout, copy) per tensor of the walk

    def _walk(self) -> tuple[list[tuple[str, Any]], list[tuple[str, torch.Tensor]]]:
        """``(refs, tensors)``: ``("is", object)`` for every batch and container item (compared by
        identity), ``("==", value)`` for lengths, dict keys and plain values (compared by value)."""
        refs: list[tuple[str, Any]] = [("==", len(self.batches))]
        tensors: list[tuple[str, torch.Tensor]] = []

        def walk(obj: Any, path: str, depth: int) -> None:
            if isinstance(obj, _PLAIN):
                refs.append(("==", (type(obj), obj)))
                return
            refs.append(("is", obj))
            if isinstance(obj, torch.Tensor):
                tensors.append((path, obj))
            elif depth > 8:
                return
            elif isinstance(obj, (list, tuple)):
                refs.append(("==", len(obj)))
                for k, x in enumerate(obj):
                    walk(x, f"{path}, {'tensor' if isinstance(x, torch.Tensor) else 'item'} {k}", depth + 1)
            elif isinstance(obj, dict):
                refs.append(("==", tuple(map(repr, obj))))
                for k, x in obj.items():
                    walk(x, f"{path}[{k!r}]", depth + 1)

        for i, b in enumerate(self.batches):
            walk(b, f"batch {i}", 0)
        return refs, tensors

    def snapshot(self) -> None:
        """Record the batches as they are now (call right after building graphs from them)."""
        refs, tensors = self._walk()
        self._refs = refs
        self._tensors = [(_layout(t), copy_of(t)) for _, t in tensors]

    def clear(self) -> None:
        self._refs, self._tensors = None, []

    def changed(self) -> str | None:
        """``None`` if the batches are those of the snapshot, else what changed first."""
        if self._refs is None:
            return None
        refs, tensors = self._walk()
        if len(refs) != len(self._refs) or len(tensors) != len(self._tensors):
            return "the list of batches (an item added or removed)"
        for (how, new), (old_how, old) in zip(refs, self._refs):
            if how != old_how or (new is not old if how == "is" else new != old):
                return "the list of batches (an item replaced, or a value inside a batch changed)"
        # a replaced tensor is an "is" ref above: here every tensor is the snapshot's own
        for (path, t), (layout, _) in zip(tensors, self._tensors):
            if _layout(t) != layout:
                return f"{path} (written in place)"
        i = first_changed([(t, copy) for (_, t), (_, copy) in zip(tensors, self._tensors)])
        return None if i is None else f"{tensors[i][0]} (its values changed)"
