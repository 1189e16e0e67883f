"""Resolve the ``params`` argument: which parameters a Hessian or gradient is taken over.

``params`` may be

* ``None``: every parameter of the model with ``requires_grad=True`` (in
  ``model.named_parameters()`` order), except *auxiliary* ones (below);
* a string: a parameter name (``"conv1.weight"``) or a module name (``"conv1"``, meaning all
  of that module's trainable parameters but its auxiliary ones, unless all of them are
  auxiliary: ``"conv1.wq"`` selects a quantizer's own step);
* an ``nn.Module`` that is a sub-module of the model, or a parameter tensor of the model;
* a list/tuple mixing the above.

The result is an ordered, duplicate-free pair ``(names, tensors)``; the flat vector layout of
every operator in :mod:`landscape.curvature` is the concatenation of ``t.reshape(-1)`` in this
order.

**Auxiliary parameters.** A module whose attribute ``curvature_auxiliary`` is True (set it
with :func:`mark_auxiliary`) holds parameters that train with the model but are not
coordinates of the function whose curvature is asked for by default -- a learned quantizer
step size or clipping level, say. ``params=None`` skips them (so ``H.layers()`` does not list
them) and a module name skips them unless every parameter it selects is auxiliary; naming
the parameter (``"conv1.wq.step"``), its tensor or its module selects it as usual. The engine
knows nothing about what they are: the flag is the whole mechanism.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .errors import CurvatureError
from .layers import layer_of

__all__ = ["resolve_params", "layer_of", "mark_auxiliary", "auxiliary_ids", "AUXILIARY"]

#: the module attribute that marks its parameters as auxiliary (see the module docstring)
AUXILIARY = "curvature_auxiliary"


def mark_auxiliary(module: nn.Module) -> nn.Module:
    """Mark every parameter of ``module`` (and of its sub-modules) as auxiliary: trained with
    the model but skipped by the default ``params=None`` selection. Returns the module."""
    if not isinstance(module, nn.Module):
        raise CurvatureError(f"mark_auxiliary takes an nn.Module, got {type(module).__name__}")
    setattr(module, AUXILIARY, True)
    return module


def auxiliary_ids(model: nn.Module) -> set[int]:
    """``id`` of every parameter held (directly or below) by a module marked auxiliary."""
    return {id(p) for m in model.modules() if getattr(m, AUXILIARY, False) is True for p in m.parameters()}


def resolve_params(model: nn.Module, params: Any = None) -> tuple[list[str], list[torch.Tensor]]:
    """Return ``(names, tensors)`` of the selected parameters of ``model``."""
    if not isinstance(model, nn.Module):
        raise CurvatureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters())
    by_id = {id(p): n for n, p in named}
    modules = dict(model.named_modules())
    auxiliary = auxiliary_ids(model)
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad and id(p) not in auxiliary]
        if not chosen:
            more = " (all of them are auxiliary: name them in params=)" if auxiliary else ""
            raise CurvatureError(f"params=None but the model has no parameter with requires_grad=True{more}")
        return [n for n, _ in chosen], [p for _, p in chosen]

    items: Sequence[Any]
    if isinstance(params, (str, nn.Module, torch.Tensor)):
        items = [params]
    else:
        try:
            items = list(params)
        except TypeError:
            raise CurvatureError(
                f"params must be None, a name, a module, a tensor or a list of them; got {type(params).__name__}"
            ) from None
    if len(items) == 0:
        raise CurvatureError("params is an empty list: select at least one parameter")

    chosen: list[tuple[str, torch.Tensor]] = []
    for item in items:
        if isinstance(item, str):
            named_dict = dict(named)
            if item in named_dict:
                chosen.append((item, named_dict[item]))
            elif item in modules and item != "":
                sub = [(f"{item}.{n}", p) for n, p in modules[item].named_parameters() if p.requires_grad]
                if any(id(p) not in auxiliary for _, p in sub):
                    sub = [(n, p) for n, p in sub if id(p) not in auxiliary]
                if not sub:
                    raise CurvatureError(f"params: module {item!r} has no trainable parameters")
                chosen.extend(sub)
            else:
                raise CurvatureError(
                    f"params: {item!r} is neither a parameter nor a module name of the model "
                    f"(parameters: {[n for n, _ in named][:8]}{' ...' if len(named) > 8 else ''})"
                )
        elif isinstance(item, nn.Module):
            sub = [p for p in item.parameters() if p.requires_grad]
            if any(id(p) not in auxiliary for p in sub):
                sub = [p for p in sub if id(p) not in auxiliary]
            missing = [p for p in sub if id(p) not in by_id]
            if missing or not sub:
                raise CurvatureError(
                    f"params: module {type(item).__name__} is not a sub-module of the model or has no trainable parameters"
                )
            chosen.extend((by_id[id(p)], p) for p in sub)
        elif isinstance(item, torch.Tensor):
            if id(item) not in by_id:
                raise CurvatureError(
                    f"params: a tensor of shape {tuple(item.shape)} is not a parameter of the model"
                )
            chosen.append((by_id[id(item)], item))
        else:
            raise CurvatureError(f"params: cannot select parameters from a {type(item).__name__}")

    seen: set[int] = set()
    names, tensors = [], []
    for n, p in chosen:
        if id(p) in seen:
            continue
        if not p.requires_grad:
            raise CurvatureError(f"params: parameter {n!r} has requires_grad=False")
        seen.add(id(p))
        names.append(n)
        tensors.append(p)
    return names, tensors

