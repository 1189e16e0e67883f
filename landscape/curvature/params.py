"""Resolve the ``params`` argument: which parameters a Hessian or gradient is taken over.

``params`` may be

* ``None``: every parameter of the model with ``requires_grad=True`` (in
  ``model.named_parameters()`` order);
* a string: a parameter name (``"conv1.weight"``) or a module name (``"conv1"``, meaning all
  of that module's trainable parameters);
* an ``nn.Module`` that is a sub-module of the model, or a parameter tensor of the model;
* a list/tuple mixing the above.

The result is an ordered, duplicate-free pair ``(names, tensors)``; the flat vector layout of
every operator in :mod:`landscape.curvature` is the concatenation of ``t.reshape(-1)`` in this
order.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .errors import CurvatureError
from .layers import layer_of

__all__ = ["resolve_params", "layer_of"]


def resolve_params(model: nn.Module, params: Any = None) -> tuple[list[str], list[torch.Tensor]]:
    """Return ``(names, tensors)`` of the selected parameters of ``model``."""
    if not isinstance(model, nn.Module):
        raise CurvatureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters())
    by_id = {id(p): n for n, p in named}
    modules = dict(model.named_modules())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise CurvatureError("params=None but the model has no parameter with requires_grad=True")
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

