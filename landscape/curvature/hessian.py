r"""The Hessian of a model's mean loss as a linear operator (the only torch-model-specific part).

For parameters θ (the selected ``params``, flattened in order) and batches b of sizes n_b,

    L(θ) = Σ_b n_b L_b(θ) / Σ_b n_b,        H = ∇²L(θ) = Σ_b n_b ∇²L_b(θ) / Σ_b n_b,

and ``H @ v`` is computed exactly by double backward (reverse-over-reverse):
``H_b v = ∇_θ (∇_θ L_b(θ) · v)``. The first-order graph ``g_b = ∇_θ L_b`` (built with
``create_graph=True``) does not depend on v, so it is built once per batch and reused by
every product while it fits in memory (``cache_graph``): one product then costs one backward
pass through the first-order graph, not a forward + two backward passes.

Side effects: none. The model is put in eval mode (``eval_mode=True``) only while the graph is
built, and every module's previous mode is restored; gradients are taken with
``torch.autograd.grad`` so ``.grad`` is never touched; parameters are never written. If the
parameters or buffers are changed in place after the graph was cached (e.g. a training step),
the next product notices (tensor version counters) and rebuilds the graph.

Parameters that receive no gradient from the loss have zero curvature: their rows and
columns of H are zero, and one :class:`CurvatureWarning` names them.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .batches import as_batches, evaluate_loss, iterate, model_mode, reduce_over_batches
from .errors import CurvatureError, CurvatureWarning
from .operators import check_method
from .params import resolve_params

__all__ = ["Hessian"]


class _Graph:
    """The first-order graph of one batch: gradients that still carry a graph, and their weight."""

    __slots__ = ("grads", "index", "weight")

    def __init__(self, grads: list[torch.Tensor], index: list[int], weight: float):
        self.grads = grads
        self.index = index
        self.weight = weight


def _default_budget(device: torch.device) -> int:
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


class Hessian:
    """Hessian of the size-weighted mean of ``loss_fn(model, batch)`` over ``batches``.

    Parameters
    ----------
    model : nn.Module
        Any differentiable module (a fake-quantized student through its STE is fine).
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar tensor``, the mean loss over the batch
        (see :mod:`landscape.losses`).
    batches : list of batches or DataLoader
        The Hessian is of the mean loss over all samples (batches weighted by size). Tensors are
        moved to the parameters' device; a DataLoader should not shuffle.
    params : None, names, modules or tensors
        Which parameters (see :func:`~landscape.curvature.params.resolve_params`).
    eval_mode : bool
        Build the graph with the model in eval mode (BatchNorm uses running statistics,
        dropout off), restoring each module's mode afterwards.
    cache_graph : "auto", True or False
        Keep the first-order graph of each batch between products. ``"auto"`` caches batches
        while their estimated graph memory fits ``memory_budget`` (default: half the free
        GPU memory, or a quarter of the available RAM); the rest are recomputed per product.
    memory_budget : int, optional
        Bytes for ``cache_graph="auto"``.

    ``H @ v`` takes a 1-D tensor of length ``H.shape[0]`` (same dtype and device as the
    parameters), ``H @ V`` an ``(n, m)`` block of columns. ``H.n_matvecs`` counts products.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        batches: Iterable[Any],
        params: Any = None,
        *,
        eval_mode: bool = True,
        cache_graph: bool | str = "auto",
        memory_budget: int | None = None,
    ):
        if not callable(loss_fn):
            raise CurvatureError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
        if cache_graph not in ("auto", True, False):
            raise CurvatureError(f"cache_graph must be 'auto', True or False, got {cache_graph!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.names, self.params = resolve_params(model, params)
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise CurvatureError(
                f"selected parameters must share one dtype and device, got dtypes {sorted(map(str, dtypes))} "
                f"and devices {sorted(map(str, devices))}"
            )
        self.dtype: torch.dtype = self.params[0].dtype
        self.device: torch.device = self.params[0].device
        self.sizes = [p.numel() for p in self.params]
        self.offsets = [0, *itertools.accumulate(self.sizes)]
        n = self.offsets[-1]
        self.shape = (n, n)
        self.batches = as_batches(batches)
        self.eval_mode = bool(eval_mode)
        self.cache_graph = cache_graph
        self.memory_budget = memory_budget
        self.n_matvecs = 0
        self._cache: list[_Graph] | None = None
        self._n_cached = 0
        self._cache_complete = False
        self._versions: list[int] = []
        self._n_ref: int | None = None
        self._warned_unused = False
        self.cached_bytes = 0  # estimated memory of the cached graphs

    # ------------------------------------------------------------------ layout helpers
    def __repr__(self) -> str:
        return (
            f"Hessian(n={self.shape[0]}, params={len(self.params)} tensors, dtype={self.dtype}, "
            f"device={self.device}, cache_graph={self.cache_graph!r}, n_matvecs={self.n_matvecs})"
        )

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat vector shaped like the selected parameters."""
        return [v[a:b].view_as(p) for a, b, p in zip(self.offsets[:-1], self.offsets[1:], self.params)]

    def flatten(self, tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-parameter tensors (``None`` = zeros) into one flat vector."""
        out = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        for a, b, t in zip(self.offsets[:-1], self.offsets[1:], tensors):
            if t is not None:
                out[a:b] = t.reshape(-1)
        return out

    def _check_vector(self, v: Any) -> torch.Tensor:
        n = self.shape[0]
        if not isinstance(v, torch.Tensor):
            raise CurvatureError(f"H @ v needs a torch.Tensor, got {type(v).__name__}")
        if v.dim() not in (1, 2) or v.shape[0] != n:
            raise CurvatureError(
                f"H @ v needs a vector of length {n} (or an ({n}, m) block), got shape {tuple(v.shape)}"
            )
        if v.dtype != self.dtype:
            raise CurvatureError(f"H @ v needs dtype {self.dtype} (the parameters'), got {v.dtype}")
        if v.device != self.device:
            raise CurvatureError(f"H @ v needs a tensor on {self.device} (the parameters' device), got {v.device}")
        return v.detach()

    # ------------------------------------------------------------------ graph building
    def _state_versions(self) -> list[int]:
        return [t._version for t in itertools.chain(self.model.parameters(), self.model.buffers())]

    def _build(self, index: int, batch: Any, size: int, measure: bool = False) -> tuple[_Graph, int]:
        """First-order graph of one batch; returns it and (if ``measure``) its saved-tensor bytes."""
        if self._n_ref is None:
            self._n_ref = size
        weight = size / self._n_ref
        nbytes = 0
        seen: set[int] = set()
        skip = {p.untyped_storage().data_ptr() for p in self.model.parameters()}

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
            return t.detach()

        with torch.enable_grad(), model_mode(self.model, self.eval_mode):
            if measure:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    graph = self._first_order(index, batch, weight)
            else:
                graph = self._first_order(index, batch, weight)
        return graph, nbytes

    def _first_order(self, index: int, batch: Any, weight: float) -> _Graph:
        loss = evaluate_loss(self.loss_fn, self.model, batch, index)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        unused = [n for n, g in zip(self.names, grads) if g is None]
        if unused and not self._warned_unused:
            self._warned_unused = True
            warnings.warn(
                f"{len(unused)} parameter(s) receive no gradient from the loss; their curvature is "
                f"treated as zero: {unused}",
                CurvatureWarning,
                stacklevel=4,
            )
        keep = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return _Graph([g for _, g in keep], [i for i, _ in keep], weight)

    def _fill_cache(self) -> None:
        """Build and keep the first-order graphs of the leading batches that fit the budget."""
        self._cache, self._n_cached, self.cached_bytes = [], 0, 0
        budget = None
        if self.cache_graph == "auto":
            budget = self.memory_budget if self.memory_budget is not None else _default_budget(self.device)
        per_sample = None
        complete = True
        for i, batch, size in iterate(self.batches, self.device):
            measure = budget is not None and per_sample is None
            if per_sample is not None and self.cached_bytes + per_sample * size > budget:
                complete = False
                break
            graph, nbytes = self._build(i, batch, size, measure=measure)
            if measure:
                per_sample = nbytes / max(size, 1)
                if nbytes > budget:
                    complete = False
                    del graph
                    break
            self.cached_bytes += int(per_sample * size) if per_sample is not None else 0
            self._cache.append(graph)
            self._n_cached += 1
        self._cache_complete = complete
        self._versions = self._state_versions()  # after building: the forward may bump buffer versions

    def clear_cache(self) -> None:
        """Drop the cached graphs (they are rebuilt on the next product)."""
        self._cache, self._n_cached, self._cache_complete, self.cached_bytes = None, 0, False, 0

    # ------------------------------------------------------------------ products
    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        v = self._check_vector(v)
        if v.dim() == 1:
            return self._apply(v[:, None])[:, 0]
        return self._apply(v)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H @ v`` for a 1-D vector."""
        v = self._check_vector(v)
        if v.dim() != 1:
            raise CurvatureError(f"matvec needs a 1-D vector, got shape {tuple(v.shape)}")
        return self._apply(v[:, None])[:, 0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``H @ V`` for an ``(n, m)`` block of column vectors."""
        V = self._check_vector(V)
        return self._apply(V if V.dim() == 2 else V[:, None])

    def _products(self, graphs: list[_Graph], cols: list[list[torch.Tensor]], out: torch.Tensor, retain_last: bool) -> None:
        """Add ``Σ_b w_b H_b v_j`` into row j of ``out`` (shape (m, n)) for every column j."""
        outputs = [g for gr in graphs for g in gr.grads]
        for j, parts in enumerate(cols):
            gouts = [
                parts[k] if gr.weight == 1.0 else parts[k] * gr.weight for gr in graphs for k in gr.index
            ]
            if not outputs:
                continue
            res = torch.autograd.grad(
                outputs,
                self.params,
                grad_outputs=gouts,
                retain_graph=retain_last or j < len(cols) - 1,
                allow_unused=True,
            )
            for a, b, r in zip(self.offsets[:-1], self.offsets[1:], res):
                if r is not None:
                    out[j, a:b] += r.reshape(-1)

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        n, m = V.shape
        if self._cache is not None and self._versions != self._state_versions():
            self.clear_cache()  # parameters or buffers changed in place: the cached graph is stale
        if self._cache is None and self.cache_graph is not False:
            self._fill_cache()
        out = torch.zeros(m, n, dtype=self.dtype, device=self.device)
        Vt = V.T.contiguous()  # rows are contiguous: grad_outputs shaped like the parameters without copies
        cols = [self.split(Vt[j]) for j in range(m)]
        count = 0.0
        if self._cache:
            self._products(self._cache, cols, out, retain_last=True)
            count += sum(g.weight for g in self._cache)
        if not self._cache_complete:
            rest = self.batches if self._n_cached == 0 else itertools.islice(self.batches, self._n_cached, None)
            for i, batch, size in iterate(rest, self.device, start=self._n_cached, allow_empty=self._n_cached > 0):
                graph, _ = self._build(i, batch, size)
                self._products([graph], cols, out, retain_last=False)
                count += graph.weight
                del graph
        self.n_matvecs += m
        return reduce_over_batches(out, count).T

    # ------------------------------------------------------------------ conveniences
    def dense(self) -> torch.Tensor:
        """The full ``n × n`` matrix (n products; for small models and tests)."""
        n = self.shape[0]
        cols = []
        for a in range(0, n, 64):
            b = min(n, a + 64)
            E = torch.zeros(n, b - a, dtype=self.dtype, device=self.device)
            E[torch.arange(a, b), torch.arange(b - a)] = 1
            cols.append(self @ E)
        H = torch.cat(cols, dim=1)
        return (H + H.T) / 2

    def as_linear_operator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` view (NumPy in and out, float64 or float32)."""
        from scipy.sparse.linalg import LinearOperator

        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32

        def mv(x: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.ascontiguousarray(x).reshape(-1)).to(device=self.device, dtype=self.dtype)
            return (self @ t).detach().cpu().numpy().astype(np_dtype, copy=False)

        def mm(X: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.ascontiguousarray(X)).to(device=self.device, dtype=self.dtype)
            return (self @ t).detach().cpu().numpy().astype(np_dtype, copy=False)

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, dtype=np_dtype)

    def trace(self, method: str = "hutchinson", max_matvecs: int = 100, rtol: float | None = None, seed: int = 0, **kwargs):
        """Stochastic trace estimate (see :func:`hutchinson` and :func:`hutchpp`) -> :class:`TraceEstimate`."""
        from .hutchinson import hutchinson
        from .hutchpp import hutchpp

        method = check_method(method, ("hutchinson", "hutch++"))
        fn = hutchinson if method == "hutchinson" else hutchpp
        return fn(self, max_matvecs=max_matvecs, rtol=rtol, seed=seed, **kwargs)

    def eigenpairs(
        self,
        k: int = 1,
        method: str = "power",
        which: str = "LA",
        tol: float = 1e-3,
        max_iter: int | None = None,
        seed: int = 0,
        **kwargs,
    ):
        """Top-k eigenpairs by ``"power"`` (with deflation), ``"lanczos"`` or ``"eigsh"`` (scipy) -> :class:`Eigenpairs`."""
        from .lanczos import eigsh, lanczos
        from .power import power_iteration

        method = check_method(method, ("power", "lanczos", "eigsh"))
        fn = {"power": power_iteration, "lanczos": lanczos, "eigsh": eigsh}[method]
        return fn(self, k=k, which=which, tol=tol, max_iter=max_iter, seed=seed, **kwargs)

    def density(self, n_runs: int = 1, n_steps: int = 100, seed: int = 0, **kwargs):
        """Spectral density by stochastic Lanczos quadrature -> :class:`SpectralDensity`."""
        from .slq import slq

        return slq(self, n_runs=n_runs, n_steps=n_steps, seed=seed, **kwargs)
