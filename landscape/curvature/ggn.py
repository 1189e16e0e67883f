r"""Gauss-Newton and Fisher operators: ``Jᵀ M J`` with the same interface as the Hessian.

For a batch b with model outputs ``f_b(θ)`` (logits, shape (B, C), or (B, T, V) for a language
model with :func:`~landscape.losses.causal_lm`) and Jacobian
``J_b = ∂f_b/∂θ``, each operator is the size-weighted mean over batches of

    A_b = J_bᵀ M_b J_b,

with an output-space matrix ``M_b`` (block-diagonal over samples) that depends on the operator:

* :class:`GGN` (generalized Gauss-Newton): ``M_b = ∂²L_b/∂f_b²``, the Hessian of the batch loss
  with respect to the outputs (``loss_fn.output_hessian``; for CE ``(diag p − ppᵀ)/B``). The
  Hessian is ``GGN + Σ_i Σ_c (∂L/∂f_ic) ∇²f_ic``: the GGN drops the second-order terms of the
  network, so it is positive semi-definite whenever the loss is convex in the outputs, and
  equals the Hessian for a model linear in θ;
* :class:`Fisher` (the true Fisher): ``M_b = E_{y∼π}[κ (π − e_y)(π − e_y)ᵀ]`` under the model's
  own predictive distribution π (``mc_samples=None``: the exact expectation over classes;
  an integer: that many sampled labels per sample, drawn once per batch from ``seed``, so the
  matrix is fixed; data-parallel, the draws also depend on the rank, so the MC Fisher over
  shards equals the single-process one in distribution, the exact one exactly). For softmax losses (CE, KL to a teacher) it equals the GGN;
* :class:`EmpiricalFisher`: ``M_b = (1/B) Σ_i ℓ'_i ℓ'_iᵀ`` with ``ℓ'_i = ∂ℓ_i/∂f_i`` the gradient of
  sample i's loss (``ℓ_i`` such that the batch loss is their mean) at the *observed* label:
  ``A = (1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ``. Not a curvature in general (it is not the Fisher away from the
  optimum); offered because it is what many papers call "the Fisher".

All three are positive semi-definite (the Hessian is not: its negative part is what a teacher
of flat minima wants to show).

Products (exact, reverse mode only): for each batch the forward graph ``f_b`` and the graph of
``g(u) = J_bᵀ u`` (built with ``create_graph=True`` for a dummy u) are cached; then

    J v = ∂(g(u) · v)/∂u      (a backward through the backward graph),
    w = weight · M (J v),      A_b v = J_bᵀ w      (one backward through the forward graph).

The loss must split at the outputs: ``loss_fn.outputs(model, batch)``,
``loss_fn.on_outputs(f, batch)`` and (GGN, Fisher) ``loss_fn.output_hessian(f, batch)``, as the
objects of :mod:`landscape.losses` do. Everything else (freshness, batches, views, estimators)
is described in :mod:`landscape.curvature.base`; batch sums go through
:func:`~landscape.curvature.batches.reduce_over_batches` like every product.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from .base import CurvatureOperator
from .batches import model_mode
from .errors import CurvatureError
from .reduction import group_rank

__all__ = ["GGN", "Fisher", "EmpiricalFisher"]


class _FactorMatrix:
    """``M_i = Σ_k G_ki G_kiᵀ`` per block i, from factors G of shape (K, *blocks, C): a block is a
    row of the outputs (a sample of (B, C) logits, a token of (B, T, V) ones); ``apply`` takes w
    shaped like the outputs, read as G's blocks (``w.reshape(G.shape[1:])``)."""

    def __init__(self, G: torch.Tensor):
        self.G = G.detach()

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        w2 = w.reshape(self.G.shape[1:])
        coef = (self.G * w2[None]).sum(dim=-1, keepdim=True)
        return (coef * self.G).sum(dim=0).reshape(w.shape)


class _OutputGraph:
    __slots__ = ("f", "u", "gu", "M")

    def __init__(self, f: torch.Tensor, u: torch.Tensor, gu: list[torch.Tensor | None], M: Any):
        self.f, self.u, self.gu, self.M = f, u, gu, M


class _JMJ(CurvatureOperator):
    """Shared machinery of the Gauss-Newton-type operators ``Σ_b w_b J_bᵀ M_b J_b / Σ_b w_b``."""

    _needs_hessian = True

    def _check_loss(self, loss_fn: Any) -> None:
        need = ["outputs", "on_outputs"] + (["output_hessian"] if self._needs_hessian else [])
        missing = [m for m in need if not callable(getattr(loss_fn, m, None))]
        if missing:
            raise CurvatureError(
                f"{type(self).__name__} needs a loss that splits at the model's outputs, with methods {need}; "
                f"{type(loss_fn).__name__} lacks {missing}. Use landscape.losses.cross_entropy(), kl_to_teacher(...) "
                "or distillation(...), or give your loss object those methods"
            )

    def _output_matrix(self, f: torch.Tensor, batch: Any, index: int) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _build(self, index: int, batch: Any, weight: float, select: list[int] | None) -> _OutputGraph:
        core = self._core
        sel = list(range(len(core.params))) if select is None else list(select)
        with torch.enable_grad(), model_mode(core.model, core.eval_mode):
            try:
                f = core.loss_fn.outputs(core.model, batch)
            except CurvatureError:
                raise
            except Exception as exc:
                raise CurvatureError(f"loss_fn.outputs raised on batch {index}: {type(exc).__name__}: {exc}") from exc
            if not isinstance(f, torch.Tensor):
                raise CurvatureError(f"loss_fn.outputs must return a tensor, got {type(f).__name__} on batch {index}")
            if not bool(torch.isfinite(f.detach()).all()):
                raise CurvatureError(f"the model's outputs are not finite on batch {index}")
            if not f.requires_grad:
                raise CurvatureError(
                    f"the model's outputs on batch {index} do not depend on the selected parameters (no autograd graph)"
                )
            M = self._output_matrix(f, batch, index)
            u = torch.zeros_like(f, requires_grad=True)
            return _OutputGraph(f, u, self._graph_of_gradients(f, sel, u), M)

    def _products(self, item: _OutputGraph, cols: list[list[torch.Tensor]], out: torch.Tensor, weight: float,
                  retain: bool) -> None:
        targets = self._targets(item.gu)
        if targets is None:
            return
        sel, rows, inputs = targets
        for j, parts in enumerate(cols):
            (Jv,) = torch.autograd.grad([g for _, g in sel], item.u, grad_outputs=[parts[k] for k, _ in sel],
                                        retain_graph=True)
            w = item.M.apply(Jv)
            if weight != 1.0:
                w = w * weight
            res = torch.autograd.grad(item.f, inputs, grad_outputs=w, retain_graph=retain or j < len(cols) - 1,
                                      allow_unused=True)
            self._add_rows(out[j], rows, res)


class GGN(_JMJ):
    r"""Generalized Gauss-Newton ``Σ_b n_b J_bᵀ (∂²L_b/∂f_b²) J_b / Σ_b n_b`` (see the module docstring).

    Same constructor and interface as :class:`~landscape.curvature.Hessian` (``@``, ``shape``,
    ``trace``, ``eigenpairs``, ``density``, ``dense``, ``as_linear_operator``, ``restrict``,
    ``layers``); ``loss_fn`` must provide ``outputs``, ``on_outputs`` and ``output_hessian``.

    Example (a linear model with CE: GGN = Hessian)::

        >>> import torch
        >>> from landscape.curvature import GGN, Hessian
        >>> from landscape.losses import cross_entropy
        >>> lin = torch.nn.Linear(3, 4).double()
        >>> batch = [(torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1]))]
        >>> G, H = GGN(lin, cross_entropy(), batch), Hessian(lin, cross_entropy(), batch)
        >>> torch.allclose(G.dense(), H.dense(), atol=1e-12)
        True
    """

    kind = "ggn"
    _what = "the GGN"

    def _output_matrix(self, f: torch.Tensor, batch: Any, index: int) -> Any:
        return self._core.loss_fn.output_hessian(f.detach(), batch)


class Fisher(_JMJ):
    r"""The true Fisher ``Σ_b n_b J_bᵀ E_{y∼π}[κ(π − e_y)(π − e_y)ᵀ] J_b / Σ_b n_b`` (see the module).

    ``mc_samples=None``: the exact expectation over the classes (equal to the GGN for CE and KL);
    an integer S: S labels sampled per sample from the model's distribution, with a generator
    seeded from ``seed``, the batch index and (data-parallel) the rank: one fixed matrix, whatever
    is cached.
    """

    kind = "fisher"
    _what = "the Fisher"

    def __init__(self, model: nn.Module, loss_fn: Any, batches: Iterable[Any], params: Any = None, *,
                 mc_samples: int | None = None, seed: int = 0, **kwargs: Any):
        if mc_samples is not None and (isinstance(mc_samples, bool) or not isinstance(mc_samples, int)
                                       or mc_samples < 1):
            raise CurvatureError(f"mc_samples must be None (exact) or an integer >= 1, got {mc_samples!r}")
        self.mc_samples = mc_samples
        self.seed = int(seed)
        super().__init__(model, loss_fn, batches, params, **kwargs)

    def _output_matrix(self, f: torch.Tensor, batch: Any, index: int) -> Any:
        M = self._core.loss_fn.output_hessian(f.detach(), batch)
        if not callable(getattr(M, "fisher_factors", None)):
            raise CurvatureError(
                f"Fisher needs the loss's output_hessian to offer fisher_factors (a likelihood); "
                f"{type(M).__name__} does not"
            )
        gen = None
        if self.mc_samples is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index
                                                + group_rank(self._core.group) * 1_000_000_007)
        return _FactorMatrix(M.fisher_factors(self.mc_samples, gen))


class EmpiricalFisher(_JMJ):
    r"""Empirical Fisher ``(1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ`` over all N samples (observed labels; see the module).

    ``ℓ_i`` are the per-sample losses whose mean is the batch loss; their output gradients are
    ``ℓ'_i = B · ∂L_b/∂f_i``, taken by autograd from ``loss_fn.on_outputs``. A sample is a row of
    the batch: for a language model (``causal_lm``, (B, T, V) logits) a sequence, whose ``ℓ_i``
    is B times its tokens' share of the token mean.
    """

    kind = "empirical_fisher"
    _what = "the empirical Fisher"
    _needs_hessian = False

    def _output_matrix(self, f: torch.Tensor, batch: Any, index: int) -> Any:
        fd = f.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self._core.loss_fn.on_outputs(fd, batch)
            if loss.numel() != 1 or not bool(torch.isfinite(loss.detach())):
                raise CurvatureError(f"loss_fn.on_outputs must give a finite scalar, got {loss} on batch {index}")
            (g,) = torch.autograd.grad(loss, fd)
        B = f.shape[0]
        # one block per sample: all of a sample's outputs (a sequence's (T, V) logits) together
        return _FactorMatrix((B**0.5 * g).reshape(1, B, -1))
