r"""Per-layer quantization damage: measured, and predicted from the gradient and the Hessian.

For each quantized weight layer l of a student, δ_l = ŵ_l − w_l is the difference between the
weight the quantized layer uses in its forward pass (:func:`.forward_weight.forward_weight`)
and the float model's weight. With L the size-weighted mean loss of the *float* model over the
batches (activations in float), and only layer l's weight moved:

    measured      L(w + δ_l) − L(w)                          (a direct evaluation)
    first_order   g_l · δ_l,            g_l = ∂L/∂w_l at w
    second_order  ½ δ_lᵀ H_ll δ_l,      H_ll the layer's diagonal Hessian block at w (one product)
    taylor        first_order + second_order                (the second-order Taylor model)
    trace_proxy   ½ · mean(δ_l²) · tr H_ll                  (HAWQ-V2's estimate: δ_l taken as
                                                            isotropic noise of the same power;
                                                            tr H_ll by Hutchinson, with its stderr)

``measured = taylor + O(‖δ_l‖³)``: the prediction is good when δ_l is small against the scale
on which H changes (not at 2 bits, where δ is of the order of w), when L is twice
differentiable along δ_l (a ReLU kink crossed by the rounding breaks it) and, for
``second_order`` alone, when the float model is at a minimum (g_l = 0; a model that has not
converged has a first-order term of either sign, which the second-order term cannot see).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import pandas as pd
import torch
from torch import nn

from landscape.curvature import Hessian, gradient, mean_loss
from landscape.curvature.batches import as_batches
from landscape.sensitivity.errors import SensitivityError
from landscape.sensitivity.forward_weight import quantized_weights

__all__ = ["layer_damage", "COLUMNS"]

COLUMNS = ("layer", "n_params", "measured", "first_order", "second_order", "taylor", "trace_proxy",
           "trace_proxy_stderr", "trace", "trace_stderr", "trace_converged", "delta_sq_mean", "loss")


def _select(available: Sequence[str], params: Any) -> list[str]:
    """The layers to report: every quantized one, or those ``params`` names (layer or weight names)."""
    if params is None:
        return list(available)
    items = [params] if isinstance(params, str) else list(params)
    chosen = []
    for item in items:
        if not isinstance(item, str):
            raise SensitivityError(f"layer_damage: params must be layer names (or '<layer>.weight'), "
                                   f"got a {type(item).__name__}")
        layer = item[: -len(".weight")] if item.endswith(".weight") and item not in available else item
        if layer not in available:
            raise SensitivityError(f"layer_damage: params names {item!r}, which is not a quantized weight layer "
                                   f"of the quantized model (quantized layers: {', '.join(available)})")
        chosen.append(layer)
    return list(dict.fromkeys(chosen))


@contextmanager
def _trainable(weights: Iterable[torch.Tensor]) -> Iterator[None]:
    """Within the block every weight requires grad (a frozen teacher's too); restored after."""
    weights = list(weights)
    before = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        yield
    finally:
        for w, b in zip(weights, before):
            w.requires_grad_(b)


def layer_damage(model: nn.Module, quantized: nn.Module, loss_fn, batches, *, params: Any = None,
                 trace_matvecs: int = 64, trace_rtol: float | None = None, seed: int = 0,
                 eval_mode: bool = True) -> pd.DataFrame:
    r"""One row per quantized weight layer: the loss increase of quantizing that layer alone,
    measured and predicted (see the module docstring for every column's formula).

    ``model``: the float network; ``quantized``: its quantized copy (layer names kept, as
    :func:`landscape.quant.quantize_model` keeps them), whose layers' forward weights give δ.
    ``loss_fn(model, batch)``, ``batches``: as for :class:`landscape.curvature.Hessian`; every
    number is of the size-weighted mean loss over all batches. ``params``: the layers to
    report (names, or ``"<layer>.weight"``); default every quantized weight layer.
    ``trace_matvecs`` / ``trace_rtol`` / ``seed``: Hutchinson's budget, stopping rule and probe
    seed for tr H_ll. The model is left as it was (weights bit for bit, modes, ``.grad``).

    Columns: :data:`COLUMNS` (``loss`` is L(w), the same on every row).
    """
    batches = as_batches(batches)
    forward = dict(quantized_weights(quantized))
    if not forward:
        raise SensitivityError("layer_damage: the quantized model has no quantized weight layer (no "
                               "quantized_weight() and no weight quantizer module on any layer); quantize it "
                               "with landscape.quant.quantize_model, or give its layers a 'weight_quantizer'")
    layers = _select(list(forward), params)
    modules = dict(model.named_modules())
    weights, deltas = [], []
    for layer in layers:
        w = getattr(modules.get(layer), "weight", None)
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(forward[layer].shape):
            raise SensitivityError(f"layer_damage: quantized layer {layer!r} has no weight of shape "
                                   f"{tuple(forward[layer].shape)} in the float model; pass the float model the "
                                   "quantized one was made from (quantize_model keeps the layer names)")
        weights.append(w)
        deltas.append(forward[layer].to(device=w.device, dtype=w.dtype) - w.detach())

    names = [f"{layer}.weight" for layer in layers]
    return damage_table(model, dict(zip(names, weights)), dict(zip(names, deltas)),
                        {layer: [name] for layer, name in zip(layers, names)}, loss_fn, batches,
                        trace_matvecs=trace_matvecs, trace_rtol=trace_rtol, seed=seed, eval_mode=eval_mode,
                        where="layer_damage", what="weights")


def damage_table(model: nn.Module, params: dict[str, torch.Tensor], delta: dict[str, torch.Tensor],
                 blocks: dict[str, Sequence[str]], loss_fn, batches, *, trace_matvecs: int, trace_rtol: float | None,
                 seed: int, eval_mode: bool, where: str, what: str) -> pd.DataFrame:
    """The rows of :func:`layer_damage` and :func:`~landscape.sensitivity.block_damage`: one per
    block (a layer is a block of one weight), measured by moving the block's parameters
    ``params[n]`` by ``delta[n]`` alone (restored bit for bit after), predicted from one gradient
    and one Hessian over every named parameter (the block's diagonal block, its trace by
    Hutchinson). ``where`` / ``what``: the caller and what it quantized, for the error message."""
    base = mean_loss(model, loss_fn, batches, eval_mode=eval_mode)
    measured = {}
    for block, members in blocks.items():
        saved = {n: params[n].detach().clone() for n in members}
        try:
            with torch.no_grad():
                for n in members:
                    params[n].add_(delta[n])
            measured[block] = mean_loss(model, loss_fn, batches, eval_mode=eval_mode) - base
        finally:
            with torch.no_grad():
                for n in members:
                    params[n].copy_(saved[n])

    names = [n for members in blocks.values() for n in members]
    rows = []
    with _trainable(params[n] for n in names):
        H = Hessian(model, loss_fn, batches, params=names, eval_mode=eval_mode)
        g = gradient(model, loss_fn, batches, params=H.names, eval_mode=eval_mode)
        g_of = dict(zip(H.names, torch.split(g, [params[n].numel() for n in H.names])))
        for block, members in blocks.items():
            view = H.restrict(list(members))
            flat = torch.cat([delta[n].reshape(-1) for n in view.names]).double()
            first = float(sum(float(g_of[n].double() @ delta[n].reshape(-1).double()) for n in members))
            second = 0.5 * float(flat @ (view @ flat.to(g.dtype)).double())
            tr = view.trace(max_matvecs=trace_matvecs, rtol=trace_rtol, seed=seed)
            msq = float(flat.pow(2).mean())
            rows.append({"layer": block, "n_params": int(flat.numel()), "measured": float(measured[block]),
                         "first_order": first, "second_order": second, "taylor": first + second,
                         "trace_proxy": 0.5 * msq * tr.value, "trace_proxy_stderr": 0.5 * msq * tr.stderr,
                         "trace": tr.value, "trace_stderr": tr.stderr, "trace_converged": bool(tr.converged),
                         "delta_sq_mean": msq, "loss": float(base)})
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    if not all(math.isfinite(v) for v in out[["measured", "first_order", "second_order"]].to_numpy().ravel()):
        raise SensitivityError(f"{where}: a loss, gradient or curvature came out non-finite; the quantized "
                               f"{what} may be far outside the float model's range (check the quantizer)")
    return out
