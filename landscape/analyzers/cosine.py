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

from landscape.analyzers._common import Point, flat_gradient
from landscape.analyzers.tidy import row
from landscape.curvature import cosine_rows, layer_slices

NAME = "cosine"
PAIRWISE = False
VERSION = 2


def analyze(point: Point, cfg: dict) -> list[dict]:
    names = point.param_names()
    grads = {l: flat_gradient(point, l, names) for l in point.available(cfg["losses"])}
    layers = layer_slices(point.model, names) if cfg[NAME]["per_layer"] else None
    return [row(point.meta, **r) for r in cosine_rows(grads, layers)]
