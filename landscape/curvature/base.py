r"""What every curvature operator shares: selection, layout, freshness, products, views, estimators.

:class:`CurvatureOperator` is the base of :class:`~landscape.curvature.Hessian`,
:class:`~landscape.curvature.GGN`, :class:`~landscape.curvature.EmpiricalFisher` and
:class:`~landscape.curvature.Fisher`. A subclass says how to build one batch's graph and how
to take products with it; this class does the rest:

* **layout**: the selected parameters, flattened in order (``names``, ``split``, ``flatten``);
* **never stale**: before every product the model's parameters and buffers (and those of any
  module the loss reaches, e.g. a teacher in an attribute, a closure or a ``functools.partial``,
  with the loss's own settings such as a temperature) are compared with the state the cached
  graphs were built from (:class:`~landscape.curvature.state.StateTracker`); after any change --
  ``.data`` writes, re-assignment, ``load_state_dict``, ``vector_to_parameters``, ``.to()``,
  BatchNorm statistics, a loss attribute, a plain attribute of one of the model's modules (a
  quantizer's bit width, a BatchNorm's ``eps``), a replaced activation module, and with
  ``eval_mode=False`` a switch between ``train()`` and ``eval()`` -- the graphs are rebuilt, so every product,
  ``dense()`` and every estimator answers for the model as it is at that moment. A parameter that is no longer in the model
  (a replaced module) is looked up again by name, or refused with a clear error;
* **batches** (:class:`~landscape.curvature.batches.BatchSource`): a loader that reshuffles
  or augments at random is refused on its second pass; a list (or tuple) of batches is watched
  like the model (:class:`~landscape.curvature.batch_state.BatchWatch`: an item replaced, added
  or removed, a tensor written in place, through ``.data`` too), and the graphs are rebuilt, so a
  product answers for the batches as they are now;
* **curvature that cannot be computed is never a silent zero**: a parameter whose gradient
  has no graph (a backward that detaches) or passes through a ``@once_differentiable``
  backward (e.g. a straight-through estimator written as an ``autograd.Function``) gets zero
  rows and columns and one :class:`~landscape.curvature.CurvatureWarning` naming its layer;
* **views**: :meth:`restrict` and :meth:`layers` give operators on a subset of the
  parameters (diagonal blocks) that share this operator's cached graphs -- per-layer
  analyses cost one graph, not one per layer;
* **estimators**: ``trace``, ``eigenpairs``, ``density`` are thin aliases of the free
  functions in :mod:`landscape.curvature.estimators` (the implementations, written against
  any operator with ``@`` and ``shape``); ``as_linear_operator`` for scipy.

Side effects: none. The model is put in eval mode (``eval_mode=True``) only while a graph is
built, every module's mode and every buffer's value are restored afterwards, gradients are
taken with ``torch.autograd.grad`` (``.grad`` is never touched), parameters are never written.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .attention import twice_differentiable
from .batch_state import BatchWatch
from .batches import BatchSource, reduce_over_batches, shard_failure
from .errors import CurvatureError, CurvatureWarning
from .graph_cache import GraphCache
from .groups import Cut, group_names, packed_cuts
from .layers import layer_of
from .params import resolve_params
from .reduction import resolve_group
from .results import Eigenpairs, SpectralDensity, TraceEstimate
from .state import StateTracker

__all__ = ["CurvatureOperator", "no_curvature_indices"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]

_ERROR_NODE = "torch::autograd::Error"  # the node @once_differentiable puts on a double-backward path


def no_curvature_indices(grads: Sequence[torch.Tensor | None]) -> set[int]:
    """Indices of gradients that cannot be differentiated again: no graph at all (a backward that
    detaches), or a graph that passes through a ``@once_differentiable`` backward."""
    out: set[int] = set()
    memo: dict[Any, bool] = {}
    keep: list[Any] = []  # hold the node wrappers so their ids are not reused during the walk

    def reaches_error(root: Any) -> bool:
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if node is None or (node in memo and not done):
                continue
            if done:
                memo[node] = node.name() == _ERROR_NODE or any(
                    memo.get(f, False) for f, _ in node.next_functions if f is not None
                )
                continue
            keep.append(node)
            stack.append((node, True))
            stack.extend((f, False) for f, _ in node.next_functions if f is not None and f not in memo)
        return memo.get(root, False)

    for i, g in enumerate(grads):
        if g is None:
            continue
        if not g.requires_grad or g.grad_fn is None:
            out.add(i)
        elif reaches_error(g.grad_fn):
            out.add(i)
    return out


def _active_dropout(model: nn.Module) -> list[str]:
    return [
        name or type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]


def _refuse_dropout(model: nn.Module) -> None:
    active = _active_dropout(model)
    if active:
        raise CurvatureError(
            f"eval_mode=False with active dropout in {active}: every graph would draw new dropout masks, "
            "so the matrix would be random and trace/eigenpairs/density meaningless. Put the dropout "
            "modules in eval mode (module.eval()) or use eval_mode=True"
        )


class _Core:
    """State shared by an operator and its views: the model, the batches, the cache, the tracker."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Any, names: list[str], params: list[torch.Tensor],
                 eval_mode: bool, cache_graph: bool | str, memory_budget: int | None, build: Callable,
                 group: Any = None):
        self.model = model
        self.group = group  # a resolved torch.distributed group, or None (see curvature.reduction)
        self.loss_fn = loss_fn
        self.names = names
        self.params = params
        self.eval_mode = eval_mode
        self.source = BatchSource(batches, allow_empty=group is not None)
        self.device = params[0].device
        self.cache = GraphCache(self.source, build, self.device, cache_graph, memory_budget)
        self.tracker = StateTracker(model, loss_fn, modes=not eval_mode)  # eval_mode=True sets the modes itself
        # a list (or tuple) of batches is watched like the model; a loader is fingerprinted per pass
        # instead (BatchSource), so its watch watches nothing (an empty list never changes)
        self.watch = BatchWatch(self.source.batches if self.source.fixed else ())
        self.n_fills = 0
        self.unused: set[int] = set()
        self.no_curvature: set[int] = set()
        self.inspected: set[int] = set()
        self._warned_unused = False
        self._warned_nc: set[int] = set()

    # ------------------------------------------------------------------ freshness
    def refresh(self) -> None:
        """Make the cached graphs correspond to the model as it is now (rebuild if anything changed)."""
        frozen = [n for n, p in zip(self.names, self.params) if not p.requires_grad]
        if frozen:  # toggled after the operator was built: its curvature cannot be taken
            raise CurvatureError(
                f"parameter(s) {frozen[:3]} of this operator no longer require grad (requires_grad_(False) "
                "after it was built): set requires_grad back, or build a new operator with params= the "
                "parameters you want")
        if self.cache.policy is False:  # nothing is kept: follow replaced parameters, snapshot nothing
            if not self.eval_mode:  # every product builds graphs in the model's modes
                _refuse_dropout(self.model)
            self._reresolve()
            if not self.cache.filled:
                self.cache.fill(set())
                self.n_fills += 1
            return
        if self.cache.filled:
            what = self.tracker.changed() or self.watch.changed()
            if what is not None:
                self.cache.clear()
                self.tracker.clear()
                self.watch.clear()
                self._reresolve()
                self.inspected.clear()  # a changed model may have gained or lost (computable) gradients
                self.unused.clear()
                self.no_curvature.clear()
        if not self.cache.filled:
            if not self.eval_mode:  # e.g. model.train() since the last product, dropout included
                _refuse_dropout(self.model)
            self.cache.fill({p.untyped_storage().data_ptr() for p in self.model.parameters()})
            self.n_fills += 1
            self.tracker.snapshot()
            self.watch.snapshot()

    def _reresolve(self) -> None:
        """Parameters may have been replaced (new module, ``load_state_dict(assign=True)``): look them up by name."""
        current = dict(self.model.named_parameters())
        new = []
        for name, old in zip(self.names, self.params):
            p = current.get(name)
            if p is None:
                raise CurvatureError(
                    f"parameter {name!r} of this operator is no longer in the model (a module was replaced or "
                    "deleted): build a new operator"
                )
            if p.shape != old.shape:
                raise CurvatureError(
                    f"parameter {name!r} changed shape from {tuple(old.shape)} to {tuple(p.shape)}: build a new operator"
                )
            new.append(p)
        dtypes = {p.dtype for p in new}
        devices = {p.device for p in new}
        if len(dtypes) > 1 or len(devices) > 1:
            raise CurvatureError(
                f"after a change of the model its selected parameters no longer share one dtype and device "
                f"({sorted(map(str, dtypes))}, {sorted(map(str, devices))})"
            )
        self.params[:] = new
        self.device = new[0].device
        self.cache.device = self.device

    # ------------------------------------------------------------------ warnings
    def inspect(self, grads: Sequence[torch.Tensor | None], select: Iterable[int], what: str) -> None:
        """Record (and warn once about) parameters without gradient or without computable curvature."""
        todo = [i for i in select if i not in self.inspected]
        if not todo:
            return
        self.inspected.update(todo)
        unused = [i for i in todo if grads[i] is None]
        self.unused.update(unused)
        if unused and not self._warned_unused:
            self._warned_unused = True
            names = [self.names[i] for i in unused]
            warnings.warn(
                f"{len(names)} parameter(s) receive no gradient from the loss; their curvature is treated as "
                f"zero: {names}",
                CurvatureWarning,
                stacklevel=6,
            )
        nc = sorted(i for i in no_curvature_indices([grads[i] if i in todo else None for i in range(len(grads))]))
        self.no_curvature.update(nc)
        new = [i for i in nc if i not in self._warned_nc]
        if new:
            self._warned_nc.update(new)
            layers = sorted({layer_of(self.names[i]) for i in new})
            warnings.warn(
                f"{what} cannot be computed for layer(s) {layers} (parameters {[self.names[i] for i in new]}): their "
                "gradient cannot be differentiated again -- a backward marked @once_differentiable or one that "
                "detaches (e.g. a straight-through estimator written as an autograd.Function). Their rows and "
                "columns are set to zero. Write the backward with differentiable torch operations "
                "(see docs/own-model.md) to get their curvature.",
                CurvatureWarning,
                stacklevel=6,
            )


class CurvatureOperator:
    """A symmetric curvature matrix of the size-weighted mean of ``loss_fn(model, batch)`` over
    ``batches``, as a linear operator on the flattened ``params``.

    Parameters
    ----------
    model : nn.Module
        Any differentiable module (a fake-quantized student through its STE is fine).
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar tensor``, the mean loss over the batch
        (see :mod:`landscape.losses`).
    batches : list of batches or DataLoader
        The matrix is that of the mean loss over all samples (batches weighted by size). Tensors
        are moved to the parameters' device. A loader must give the same batches on every pass
        (no shuffling or random augmentation): this is checked, or pass ``list(loader)``.
        A batch with zero samples is an error.
    params : None, names, modules or tensors
        Which parameters (see :func:`~landscape.curvature.params.resolve_params`).
    eval_mode : bool
        Build the graphs with the model in eval mode (BatchNorm uses running statistics, dropout
        off), restoring each module's mode afterwards. With ``eval_mode=False`` the model's own
        modes are used (switching them between products rebuilds the graphs); active dropout is
        then refused, here and at every rebuild, since every rebuilt graph would draw new masks and
        the estimators assume one fixed matrix (dropout written as ``F.dropout`` inside a
        ``forward`` cannot be detected: keep such a model in eval mode).
    cache_graph : "auto", True or False
        Keep each batch's graph between products (see :mod:`~landscape.curvature.graph_cache`).
    memory_budget : int, optional
        Bytes for ``cache_graph="auto"``.
    process_group : None, False or a ``torch.distributed`` ProcessGroup
        Data-parallel products (see :mod:`~landscape.curvature.reduction`). ``None``: when
        ``torch.distributed`` is initialized with several ranks, ``batches`` are this rank's shard
        and every product is the mean over the union of all ranks' shards (one ``all_reduce`` per
        product; every rank gets the same result; a rank may hold no batch); otherwise no
        reduction. ``False``: this rank's batches are all the batches. A group: reduce over it.

    ``A @ v`` takes a 1-D tensor of length ``A.shape[0]`` (same dtype and device as the
    parameters), ``A @ V`` an ``(n, m)`` block of columns. ``A.n_matvecs`` counts products.
    """

    kind = "curvature"
    _what = "curvature"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Iterable[Any],
        params: Any = None,
        *,
        eval_mode: bool = True,
        cache_graph: bool | str = "auto",
        memory_budget: int | None = None,
        process_group: Any = None,
    ):
        if not callable(loss_fn):
            raise CurvatureError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
        if cache_graph not in ("auto", True, False):
            raise CurvatureError(f"cache_graph must be 'auto', True or False, got {cache_graph!r}")
        names, tensors = resolve_params(model, params)
        dtypes = {p.dtype for p in tensors}
        devices = {p.device for p in tensors}
        if len(dtypes) > 1 or len(devices) > 1:
            raise CurvatureError(
                f"selected parameters must share one dtype and device, got dtypes {sorted(map(str, dtypes))} "
                f"and devices {sorted(map(str, devices))}"
            )
        if not eval_mode:
            _refuse_dropout(model)
        self._check_loss(loss_fn)
        self._core = _Core(model, loss_fn, batches, names, tensors, bool(eval_mode), cache_graph, memory_budget,
                           self._build, resolve_group(process_group))
        self._select(list(range(len(names))))

    def _check_loss(self, loss_fn: LossFn) -> None:
        """Subclasses that need more of the loss (the GGN: its output-space Hessian) check it here."""

    # ------------------------------------------------------------------ selection and layout
    def _select(self, index: list[int], cuts: list[Cut | None] | None = None) -> None:
        self._index = index
        # a view may hold a slice of a parameter (groups(qkv=True)): (dim, start, length), else None
        self._cuts = list(cuts) if cuts is not None else [None] * len(index)
        # shapes of the covered parts, fixed for the operator's life (a re-resolved parameter keeps its shape)
        self._shapes = [self._part(k).shape for k in range(len(index))]
        self.sizes = [s.numel() for s in self._shapes]
        self.offsets = [0, *itertools.accumulate(self.sizes)]
        n = self.offsets[-1]
        self.shape = (n, n)
        self.n_matvecs = 0

    def _part(self, k: int) -> torch.Tensor:
        """The part of the parameter at layout position k this operator covers (a narrowed view for a slice)."""
        p, c = self._core.params[self._index[k]], self._cuts[k]
        return p if c is None else p.narrow(*c)

    @property
    def model(self) -> nn.Module:
        return self._core.model

    @property
    def loss_fn(self) -> LossFn:
        return self._core.loss_fn

    @property
    def batches(self) -> Iterable[Any]:
        return self._core.source.batches

    @property
    def eval_mode(self) -> bool:
        return self._core.eval_mode

    @property
    def names(self) -> list[str]:
        """Names of the selected parameters, in the order of the flat layout."""
        return [self._core.names[i] for i in self._index]

    @property
    def params(self) -> list[torch.Tensor]:
        """The selected parameter tensors, in the order of the flat layout."""
        return [self._core.params[i] for i in self._index]

    @property
    def dtype(self) -> torch.dtype:
        return self._core.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self._core.params[0].device

    @property
    def cache_graph(self) -> bool | str:
        return self._core.cache.policy

    @property
    def memory_budget(self) -> int | None:
        return self._core.cache.memory_budget

    @property
    def cached_bytes(self) -> int:
        """Estimated memory of the cached graphs (shared with every view of this operator)."""
        return self._core.cache.cached_bytes

    @property
    def n_cached(self) -> int:
        """Number of batches whose graph is kept."""
        return self._core.cache.n_cached

    @property
    def cache_complete(self) -> bool:
        """True when every batch's graph is kept (no batch is rebuilt per product)."""
        return self._core.cache.complete

    @property
    def n_rebuilds(self) -> int:
        """How often the cached graphs were (re)built: once, plus once per detected change of the model."""
        return self._core.n_fills

    @property
    def cuts(self) -> list[Cut | None]:
        """Per parameter of the layout: ``None`` (all of it) or the slice ``(dim, start, length)`` it covers."""
        return list(self._cuts)

    def __repr__(self) -> str:
        whole = len(self._index) == len(self._core.names) and not any(self._cuts)
        view = "" if whole else ", view"
        return (
            f"{type(self).__name__}(n={self.shape[0]}, params={len(self._index)} tensors{view}, dtype={self.dtype}, "
            f"device={self.device}, cache_graph={self.cache_graph!r}, n_matvecs={self.n_matvecs})"
        )

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat vector shaped like the selected parameters (like their slices, in a view of ``groups(qkv=True)``)."""
        return [v[a:b].view(s) for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self._shapes)]

    def _embed(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Parts shaped like whole parameters: a slice's part is padded with zeros (``Pᵀ v``)."""
        out = []
        for k, t in enumerate(parts):
            c = self._cuts[k]
            if c is not None:
                full = t.new_zeros(self._core.params[self._index[k]].shape)
                full.narrow(*c).copy_(t)
                t = full
            out.append(t)
        return out

    def flatten(self, tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-parameter tensors (``None`` = zeros) into one flat vector."""
        out = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        for a, b, t in zip(self.offsets[:-1], self.offsets[1:], tensors):
            if t is not None:
                out[a:b] = t.reshape(-1)
        return out

    # ------------------------------------------------------------------ views
    def restrict(self, params: Any) -> "CurvatureOperator":
        """The diagonal block of this operator for a subset of its parameters, sharing its graphs.

        ``params`` as in the constructor (names, module names, modules, tensors), each among this
        operator's parameters; the block's layout follows this operator's order. Products with the
        block cost one backward through the shared cached graph restricted to those parameters.
        """
        names, _ = resolve_params(self.model, params)
        mine = {n: i for n, i in zip(self.names, self._index)}
        missing = [n for n in names if n not in mine]
        if missing:
            raise CurvatureError(f"restrict: {missing} are not among this operator's parameters {self.names[:8]}")
        wanted = set(names)
        view = copy.copy(self)
        keep = [k for k, n in enumerate(self.names) if n in wanted]
        view._select([self._index[k] for k in keep], [self._cuts[k] for k in keep])
        return view

    def layers(self) -> dict[str, "CurvatureOperator"]:
        """``{layer: view}``: one diagonal block per layer (a parameter's owning module), in layout order."""
        groups: dict[str, list[str]] = {}
        for n in self.names:
            groups.setdefault(layer_of(n), []).append(n)
        return {layer: self.restrict(names) for layer, names in groups.items()}

    def groups(self, spec: Any, *, qkv: bool = False) -> dict[str, "CurvatureOperator"]:
        r"""``{group: view}``: one diagonal block per group of parameters, sharing this operator's graphs.

        ``spec`` is a regex searched in each parameter name, whose captured groups joined by ``"."``
        name the view (``r"blocks\.(\d+)\.(attn|mlp)"`` -> ``"0.attn"``, ``"0.mlp"``, ...), or a list
        of module prefixes (one view each). With ``qkv=True`` a view holding a packed q/k/v projection
        (``nn.MultiheadAttention``'s ``in_proj_weight``/``in_proj_bias``, GPT-2's ``c_attn``) also gets
        ``"<view>.q"``, ``".k"``, ``".v"``: views over a third of those parameters. See
        :mod:`landscape.curvature.groups`.
        """
        out: dict[str, CurvatureOperator] = {}
        for key, names in group_names(self.names, spec).items():
            view = self.restrict(names)
            out[key] = view
            if not qkv:
                continue
            packed = [(k, packed_cuts(n, view._core.params[i].shape)) for k, (n, i) in
                      enumerate(zip(view.names, view._index)) if view._cuts[k] is None]
            packed = [(k, c) for k, c in packed if c is not None]
            for tag in "qkv" if packed else "":
                part = copy.copy(view)
                part._select([view._index[k] for k, _ in packed], [c[tag] for _, c in packed])
                out[f"{key}.{tag}"] = part
        return out

    def clear_cache(self) -> None:
        """Drop the cached graphs (shared with every view); they are rebuilt on the next product."""
        self._core.cache.clear()
        self._core.tracker.clear()

    # ------------------------------------------------------------------ products
    def _check_vector(self, v: Any) -> torch.Tensor:
        n = self.shape[0]
        name = type(self).__name__
        if not isinstance(v, torch.Tensor):
            raise CurvatureError(f"{name} @ v needs a torch.Tensor, got {type(v).__name__}")
        if v.dim() not in (1, 2) or v.shape[0] != n:
            raise CurvatureError(
                f"{name} @ v needs a vector of length {n} (or an ({n}, m) block), got shape {tuple(v.shape)}"
            )
        if v.dtype != self.dtype:
            raise CurvatureError(f"{name} @ v needs dtype {self.dtype} (the parameters'), got {v.dtype}")
        if v.device != self.device:
            raise CurvatureError(f"{name} @ v needs a tensor on {self.device} (the parameters' device), got {v.device}")
        if not torch.isfinite(v).all():
            raise CurvatureError(f"{name} @ v: the vector holds NaN or inf entries")
        return v.detach()

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        v = self._check_vector(v)
        if v.dim() == 1:
            return self._apply(v[:, None])[:, 0]
        return self._apply(v)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Deprecated (0.3): ``A @ v`` is the one way to multiply, for a vector or an ``(n, m)`` block."""
        warnings.warn(f"{type(self).__name__}.matvec(v) is deprecated and will be removed; use A @ v",
                      DeprecationWarning, stacklevel=2)
        return self @ v

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Deprecated (0.3): ``A @ V`` is the one way to multiply, for a vector or an ``(n, m)`` block."""
        warnings.warn(f"{type(self).__name__}.matmat(V) is deprecated and will be removed; use A @ V",
                      DeprecationWarning, stacklevel=2)
        return self @ V

    @property
    def process_group(self) -> Any:
        """The ``torch.distributed`` group products are reduced over, or None (this rank's batches only)."""
        return self._core.group

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        core = self._core
        n, m = V.shape
        out = torch.zeros(m, n, dtype=self.dtype, device=self.device)
        count = 0.0
        # under a group every rank hears of a failure here; attention runs with a kernel that has a double backward
        with shard_failure(core.group) as failed, twice_differentiable():
            core.refresh()
            Vt = V.T.contiguous()  # rows contiguous: grad_outputs shaped like the parameters without copies
            cols = [self._embed(self.split(Vt[j])) for j in range(m)]
            fresh_any = False
            for item, weight, fresh in core.cache.items(self._index):
                self._products(item, cols, out, weight, retain=not fresh)
                count += weight
                fresh_any |= fresh
            if fresh_any:
                core.tracker.refresh_versions()
        self.n_matvecs += m
        out = reduce_over_batches(out, count, unit=core.cache.unit, group=core.group, what=f"a {self.kind} product",
                                  failure=failed[0] if failed else None)
        if not torch.isfinite(out).all():  # the loss was finite (checked per batch): its curvature is not
            raise CurvatureError(f"a {self.kind} product came out NaN or inf although the loss is finite: the "
                                 "model's second derivative is not finite at these weights (e.g. a sqrt or log at 0, "
                                 "or overflow in this dtype); no curvature number is given for it")
        return out.T

    def _rows(self) -> list[int]:
        """Positions (in this operator's layout) of the parameters whose rows can be computed."""
        skip = self._core.no_curvature
        return [k for k, i in enumerate(self._index) if i not in skip]

    def _targets(self, grads: Sequence[torch.Tensor | None]
                 ) -> tuple[list[tuple[int, torch.Tensor]], list[int], list[torch.Tensor]] | None:
        """For a product through one batch's cached gradients (aligned with all parameters):
        ``(sel, rows, inputs)`` -- ``(position, gradient)`` of the selected parameters with a
        differentiable gradient, the rows to fill (:meth:`_rows`) and their parameters -- or
        None when no selected parameter has one."""
        skip = self._core.no_curvature
        sel = [(k, grads[i]) for k, i in enumerate(self._index) if grads[i] is not None and i not in skip]
        if not sel:
            return None
        rows = self._rows()
        return sel, rows, [self._core.params[self._index[k]] for k in rows]

    def _add_rows(self, out_row: torch.Tensor, rows: list[int], res: Sequence[torch.Tensor | None]) -> None:
        for k, r in zip(rows, res):
            if r is not None:
                c = self._cuts[k]
                out_row[self.offsets[k] : self.offsets[k + 1]] += (r if c is None else r.narrow(*c)).reshape(-1)

    def _graph_of_gradients(self, output: torch.Tensor, sel: list[int], grad_outputs: Any = None
                            ) -> list[torch.Tensor | None]:
        """``∂(output · grad_outputs)/∂θ_i`` for i in ``sel``, with their graph (``create_graph``), aligned
        with all of the operator's parameters (``None`` elsewhere); parameters without gradient or
        without a differentiable one are recorded (and warned about once)."""
        core = self._core
        got = torch.autograd.grad(output, [core.params[i] for i in sel], grad_outputs=grad_outputs,
                                  create_graph=True, allow_unused=True)
        grads: list[torch.Tensor | None] = [None] * len(core.params)
        for i, g in zip(sel, got):
            grads[i] = g
        core.inspect(grads, sel, self._what)
        return grads

    # subclass interface ---------------------------------------------------------------
    def _build(self, index: int, batch: Any, weight: float, select: list[int] | None) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _products(self, item: Any, cols: list[list[torch.Tensor]], out: torch.Tensor, weight: float,
                  retain: bool) -> None:  # pragma: no cover
        """Add ``weight · A_b v_j`` into row j of ``out`` (shape (m, n)) for every column j."""
        raise NotImplementedError

    # ------------------------------------------------------------------ conveniences
    def dense(self) -> torch.Tensor:
        """The full ``n × n`` matrix (n products; for small models and tests), symmetrised."""
        n = self.shape[0]
        cols = []
        for a in range(0, n, 64):
            b = min(n, a + 64)
            E = torch.zeros(n, b - a, dtype=self.dtype, device=self.device)
            E[torch.arange(a, b), torch.arange(b - a)] = 1
            cols.append(self @ E)
        A = torch.cat(cols, dim=1)
        return (A + A.T) / 2

    def as_linear_operator(self) -> "scipy.sparse.linalg.LinearOperator":  # noqa: F821
        """A ``scipy.sparse.linalg.LinearOperator`` view (NumPy in and out, float64 or float32)."""
        from scipy.sparse.linalg import LinearOperator

        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32

        def mm(X: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.ascontiguousarray(X)).to(device=self.device, dtype=self.dtype)
            return (self @ t).detach().cpu().numpy().astype(np_dtype, copy=False)

        def mv(x: np.ndarray) -> np.ndarray:
            return mm(np.asarray(x).reshape(-1))

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, dtype=np_dtype)

    # ------------------------------------------------------------------ estimators (thin aliases)
    def trace(self, method: str = "hutchinson", max_matvecs: int = 100, rtol: float | None = None, seed: int = 0,
              **kwargs: Any) -> TraceEstimate:
        """Alias of :func:`landscape.curvature.estimators.trace` on this operator."""
        from .estimators import trace

        return trace(self, method=method, max_matvecs=max_matvecs, rtol=rtol, seed=seed, **kwargs)

    def eigenpairs(self, k: int = 1, method: str = "power", which: str = "LA", tol: float = 1e-3,
                   max_iter: int | None = None, seed: int = 0, **kwargs: Any) -> Eigenpairs:
        """Alias of :func:`landscape.curvature.estimators.eigenpairs` on this operator."""
        from .estimators import eigenpairs

        return eigenpairs(self, k=k, method=method, which=which, tol=tol, max_iter=max_iter, seed=seed, **kwargs)

    def density(self, n_runs: int = 1, n_steps: int = 100, seed: int = 0, **kwargs: Any) -> SpectralDensity:
        """Alias of :func:`landscape.curvature.estimators.density` on this operator."""
        from .estimators import density

        return density(self, n_runs=n_runs, n_steps=n_steps, seed=seed, **kwargs)

