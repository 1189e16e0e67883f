"""Top Hessian eigenpair of each loss and 1-D loss slices along it (METHOD.md §2.3).

For each loss L: the top (largest algebraic) eigenpair (λ, e) of its Hessian by Lanczos (the
same eigenpair the paper's power iteration converges to, in fewer products and with a residual
that bounds its error; ``method="power"`` on request), then slices along e,
k ∈ [-k_max, k_max] (default 0.5, ``n_points`` values):

* ``slice="requantized"`` — the paper's figure: L(θ + k·e·ĝ) with the student re-quantized at
  every k, i.e. the deployed network (piecewise constant in θ: its Hessian is zero almost
  everywhere);
* ``slice="frozen"`` — the same step with the rounding offsets (weights and activations)
  frozen at θ: the float network at the quantized weights, the very function whose Hessian
  the identity STE reports, so that its curvature at k = 0 is ĝ²·λ. Only for students
  quantized by :mod:`landscape.quant` (a user's own quantizer cannot be frozen from outside);
* ``slice="requantized_unit"`` — re-quantized with the unit step k·e: the same step for every
  loss, for the scale-free comparison (the ĝ step grows with the loss's scale).

ĝ scales the unit eigenvector. The paper calls it "the mean gradient along e"; we read it as
the magnitude of the mean gradient (over the analysis batches) projected on e,
ĝ = |<∇L, e>| (``scale="grad_along_e"``); ``"grad_norm"`` uses ‖∇L‖ and ``"unit"`` 1.

With a grouping (``analyze_model(groups=...)``) also each group's top eigenvalue
(``layer`` = ``"group:"`` + the group's name; no slices).

Rows: ``metric="top_eigenvalue"`` (``residual`` = ‖He − λe‖/|λ|, the relative residual that
``tol`` bounds; ``converged``, ``n_matvecs``,
``probe_seed``), ``metric="slice_scale"`` (ĝ), ``metric="loss_value"`` (L(θ)),
``metric="slice_loss"`` (one per k and slice kind; columns ``k`` and ``slice``).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from landscape.analyzers._common import Point, flat_gradient, group_views, loss_value, make_operator, probe_seed
from landscape.analyzers.tidy import row

NAME = "eigen"
PAIRWISE = False
VERSION = 2


@contextlib.contextmanager
def _frozen(model, batches):
    """Rounding offsets frozen at θ, entered in eval mode (the mode the slice is evaluated in);
    the model's own mode is restored afterwards."""
    from landscape.curvature.batches import model_mode
    from landscape.quant import frozen_rounding

    with model_mode(model, True), frozen_rounding(model, batches):
        yield


def _freezable(model) -> bool:
    from landscape.quant import act_quantizers, quantized_layers

    return bool(quantized_layers(model) or act_quantizers(model))


def _top_row(point: Point, loss: str, layer: str, pairs, seed: int, s: dict) -> dict:
    """The ``top_eigenvalue`` row of one eigensolve (the whole operator, or a group's view)."""
    return row(point.meta, loss=loss, layer=layer, metric="top_eigenvalue", value=float(pairs.values[0]),
               residual=float(pairs.residual), converged=bool(pairs.converged), n_matvecs=int(pairs.n_matvecs),
               probe_seed=seed, curvature=s["curvature"])


def analyze(point: Point, cfg: dict) -> list[dict]:
    from landscape.curvature import loss_slice

    s = cfg[NAME]
    names = point.param_names()
    ks = torch.linspace(-float(s["k_max"]), float(s["k_max"]), int(s["n_points"]), dtype=torch.float64)
    seed = probe_seed(point, NAME, s["seed"])
    kinds = [k for k in s["slices"] if k != "frozen" or _freezable(point.model)]
    rows = []
    for loss in point.available(cfg["losses"]):
        fn = point.loss(loss)
        H = make_operator(point, loss, s["curvature"])
        pairs = H.eigenpairs(k=1, method=s["method"], tol=s["tol"], max_iter=s["max_iter"], seed=seed)
        e = pairs.vectors[:, 0].detach()
        e = e / e.norm()
        rows.append(_top_row(point, loss, "all", pairs, seed, s))
        for group, block in group_views(point, H).items():  # analyze_model(groups=...): λ_max per group
            gp = block.eigenpairs(k=1, method=s["method"], tol=s["tol"], max_iter=s["max_iter"], seed=seed)
            rows.append(_top_row(point, loss, group, gp, seed, s))
        g = flat_gradient(point, loss, names).to(e)
        scale = {"grad_along_e": lambda: float((g @ e).abs()), "grad_norm": lambda: float(g.norm()),
                 "unit": lambda: 1.0}[s["scale"]]()
        rows.append(row(point.meta, loss=loss, metric="slice_scale", value=scale))
        rows.append(row(point.meta, loss=loss, metric="loss_value", value=loss_value(point, loss)))
        for kind in kinds:
            step = e if kind == "requantized_unit" else e * scale
            context = (lambda: _frozen(point.model, point.batches)) if kind == "frozen" else None
            values = loss_slice(point.model, fn, point.batches, step, ks.to(e.dtype), params=names, context=context,
                                process_group=point.process_group)
            for k, v in zip(ks.tolist(), np.asarray(values, dtype=np.float64).reshape(-1)):
                rows.append(row(point.meta, loss=loss, metric="slice_loss", value=float(v), k=float(k), slice=kind))
    return rows
