"""CE/KL gradient cosine similarity (METHOD.md §2.1).

    cos(∇θ CE, ∇θ KL) = <g_CE, g_KL> / (‖g_CE‖ ‖g_KL‖)

with g the gradient of the mean loss over the analysis batches, θ the analysed parameters
(a fake-quantized student's latent weights, through the STE). One row for the whole model
(``layer="all"``) and, with ``per_layer``, one per layer (the layer's own slice of both
gradients). The gradient norms are reported too (metric ``grad_norm``). No Hessian.

Rows: ``loss="ce|kl"``, ``metric="cosine"``; ``loss="ce"``/``"kl"``, ``metric="grad_norm"``.
A layer whose gradient is zero for one loss has an undefined angle: value NaN.
"""

from __future__ import annotations

from itertools import combinations

from landscape.analyzers._common import Point, cosine, flat_gradient, layer_slices
from landscape.analyzers.tidy import row

NAME = "cosine"
VERSION = 1


def analyze(point: Point, cfg: dict) -> list[dict]:
    names = point.param_names()
    losses = point.available(cfg["losses"])
    grads = {l: flat_gradient(point, l, names) for l in losses}
    layers = layer_slices(point.model, names) if cfg[NAME]["per_layer"] else []
    rows = []
    for l in losses:
        rows.append(row(point.meta, loss=l, metric="grad_norm", value=float(grads[l].double().norm())))
    for a, b in combinations(losses, 2):
        pair = f"{a}|{b}"
        rows.append(row(point.meta, loss=pair, metric="cosine", value=cosine(grads[a], grads[b])))
        for layer, sl in layers:
            rows.append(row(point.meta, loss=pair, layer=layer, metric="cosine",
                            value=cosine(grads[a][sl], grads[b][sl])))
    return rows
