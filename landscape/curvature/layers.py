r"""Layers of a flat parameter vector, and the cosine of two vectors -- one implementation each.

A parameter's *layer* is the module that owns it (``"features.0.weight" -> "features.0"``).
:func:`layer_slices` says where each layer's parameters sit in the flat layout of an operator
or gradient over ``names``; :func:`cosine` is the angle used for gradient comparisons,

    cos(a, b) = a · b / (‖a‖ ‖b‖)     (float64; NaN when either vector is zero),

and :func:`cosine_rows` turns a set of gradients into the tidy rows of the analyzers' tables:
``metric="grad_norm"`` per loss, ``metric="cosine"`` with ``loss="a|b"`` for each pair, for
the whole model (``layer="all"``) and per layer.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, Mapping, Sequence

import torch
from torch import nn

__all__ = ["layer_of", "layer_slices", "cosine", "cosine_rows"]


def layer_of(name: str) -> str:
    """The layer (module) a parameter belongs to: ``"features.0.weight" -> "features.0"``."""
    return name.rsplit(".", 1)[0] if "." in name else name


def layer_slices(model: nn.Module | Mapping[str, int], names: Sequence[str]) -> list[tuple[str, slice]]:
    """``[(layer, slice)]``: where each layer's parameters sit in the flat vector over ``names``.

    ``model`` is the module (its parameters' sizes are read) or a mapping ``{name: numel}``.
    Consecutive parameters of one layer share one slice; a layer whose parameters are not
    contiguous in ``names`` appears once per run.
    """
    sizes = {n: p.numel() for n, p in model.named_parameters()} if isinstance(model, nn.Module) else dict(model)
    out: list[tuple[str, slice]] = []
    start = 0
    for name in names:
        n = int(sizes[name])
        layer = layer_of(name)
        if out and out[-1][0] == layer and out[-1][1].stop == start:
            out[-1] = (layer, slice(out[-1][1].start, start + n))
        else:
            out.append((layer, slice(start, start + n)))
        start += n
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) in float64; NaN when either vector is zero (the angle is undefined)."""
    a = a.detach().double().flatten()
    b = b.detach().double().flatten()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return math.nan
    return float(a @ b / (na * nb))


def cosine_rows(
    grads: Mapping[str, torch.Tensor], layers: Sequence[tuple[str, slice]] | None = None
) -> list[dict[str, Any]]:
    """Tidy rows ``{"loss", "layer", "metric", "value"}`` for gradients ``{loss_name: flat gradient}``.

    * ``metric="grad_norm"``, ``loss=<name>``, ``layer="all"``: ‖g‖ for each loss;
    * ``metric="cosine"``, ``loss="<a>|<b>"``: cos(g_a, g_b) for every pair (in the given order),
      for ``layer="all"`` and, with ``layers`` (from :func:`layer_slices`), for each layer's slice.
    """
    rows: list[dict[str, Any]] = []
    for name, g in grads.items():
        rows.append({"loss": name, "layer": "all", "metric": "grad_norm",
                     "value": float(torch.linalg.vector_norm(g.detach().double()))})
    for a, b in combinations(list(grads), 2):
        pair = f"{a}|{b}"
        rows.append({"loss": pair, "layer": "all", "metric": "cosine", "value": cosine(grads[a], grads[b])})
        for layer, sl in layers or []:
            rows.append({"loss": pair, "layer": layer, "metric": "cosine", "value": cosine(grads[a][sl], grads[b][sl])})
    return rows
