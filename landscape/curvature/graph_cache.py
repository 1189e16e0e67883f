r"""The per-batch graph cache shared by every curvature operator (Hessian, GGN, Fisher).

A curvature product needs, for each batch b, a graph that does not depend on the vector v
(the Hessian: the first-order graph ``∇_θ L_b`` built with ``create_graph=True``; the GGN:
the forward graph and the graph of ``J_bᵀ u``). Building it is a forward and a backward pass;
using it is one (double) backward. The cache keeps the graphs of the leading batches while
their memory fits a budget, and rebuilds the rest on every product:

* ``policy=True``: keep every batch's graph; ``False``: keep none (each product rebuilds all);
* ``policy="auto"``: measure the first graph's saved-tensor memory (``saved_tensors_hooks``),
  and keep batches while ``Σ bytes ≤ memory_budget`` (default: half the free GPU memory, or a
  quarter of the available RAM).

The cache knows nothing about what a graph is: the operator passes ``build(index, batch,
weight) -> item`` and walks :meth:`GraphCache.items`. Whether the cached graphs are still
valid is the operator's question (:class:`~landscape.curvature.state.StateTracker`); it calls
:meth:`GraphCache.clear` when they are not.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from .batches import BatchSource
from .errors import CurvatureError

__all__ = ["GraphCache", "default_budget"]


def default_budget(device: torch.device) -> int:
    """Bytes the cached graphs may use: half the free GPU memory, or a quarter of available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except OSError:
        pass
    return 2 << 30


class GraphCache:
    """Per-batch graphs of one operator, kept within a memory budget.

    ``build(index, batch, weight, select)`` returns an item (any object) for one batch; ``weight``
    is the batch's size relative to the first batch's, so that ``Σ_b weight_b · q_b / Σ_b weight_b``
    is the sample-weighted mean (see :func:`~landscape.curvature.batches.reduce_over_batches`);
    ``select`` is ``None`` for a kept graph (all of the operator's parameters) or the parameter
    indices a view needs, for a graph built for one product only.
    """

    def __init__(
        self,
        source: BatchSource,
        build: Callable[[int, Any, float, Any], Any],
        device: torch.device,
        policy: bool | str = "auto",
        memory_budget: int | None = None,
    ):
        if policy not in ("auto", True, False):
            raise CurvatureError(f"cache_graph must be 'auto', True or False, got {policy!r}")
        self.source = source
        self.build = build
        self.device = device
        self.policy = policy
        self.memory_budget = memory_budget
        self.items_cached: list[tuple[Any, float]] | None = None
        self.n_cached = 0
        self.complete = False
        self.cached_bytes = 0  # estimated saved-tensor memory of the kept graphs
        self._n_ref: int | None = None

    def clear(self) -> None:
        """Drop the kept graphs; the next walk rebuilds them."""
        self.items_cached, self.n_cached, self.complete, self.cached_bytes = None, 0, False, 0

    @property
    def filled(self) -> bool:
        return self.items_cached is not None

    @property
    def unit(self) -> float:
        """The batch size the weights are relative to (the first batch's; 1 before any batch)."""
        return float(self._n_ref) if self._n_ref else 1.0

    def _weight(self, size: int) -> float:
        if self._n_ref is None:
            self._n_ref = size
        return size / self._n_ref

    def _build_measured(self, index: int, batch: Any, weight: float, skip: set[int]) -> tuple[Any, int]:
        nbytes = 0
        seen: set[int] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal nbytes
            try:
                st = t.untyped_storage()
                key = st.data_ptr()
                if key not in seen and key not in skip:
                    seen.add(key)
                    nbytes += st.nbytes()
            except (RuntimeError, NotImplementedError):
                pass
            return t.detach()  # autograd re-attaches the graph on unpack; no reference cycle

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            item = self.build(index, batch, weight, None)
        return item, nbytes

    def fill(self, skip_storages: set[int]) -> None:
        """Build and keep the graphs of the leading batches that fit (one pass over the batches)."""
        self.items_cached, self.n_cached, self.cached_bytes = [], 0, 0
        budget = None
        if self.policy == "auto":
            budget = self.memory_budget if self.memory_budget is not None else default_budget(self.device)
        if self.policy is False:
            self.complete = False
            return
        per_sample = None
        complete = True
        for i, batch, size in self.source.passes(self.device):
            w = self._weight(size)
            if budget is not None and per_sample is not None and self.cached_bytes + per_sample * size > budget:
                complete = False
                break
            if budget is not None and per_sample is None:
                item, nbytes = self._build_measured(i, batch, w, skip_storages)
                per_sample = nbytes / size
                if nbytes > budget:
                    complete = False
                    del item
                    break
            else:
                item = self.build(i, batch, w, None)
            self.cached_bytes += int(per_sample * size) if per_sample is not None else 0
            self.items_cached.append((item, w))
            self.n_cached += 1
        self.complete = complete

    def items(self, select: Any = None) -> Iterator[tuple[Any, float, bool]]:
        """``(item, weight, fresh)`` for every batch: the kept ones first (``fresh=False``: their
        graph must survive the product), then freshly built ones (dropped after use)."""
        for item, w in self.items_cached or []:
            yield item, w, False
        if not self.complete:
            for i, batch, size in self.source.passes(self.device, start=self.n_cached):
                w = self._weight(size)
                yield self.build(i, batch, w, select), w, True
