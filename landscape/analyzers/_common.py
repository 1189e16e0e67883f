"""What every analyzer shares: the tidy row, the analysed point, settings and epoch choice.

An analyzer sees a :class:`Point` -- a model, its named losses and the batches to evaluate
them on -- and returns tidy rows, one observation each::

    run, seed, epoch, loss, layer, metric, value, stderr, n_matvecs   (+ k, x, prev_epoch)

Nothing here knows about checkpoints or the trainer; the runner builds points from
checkpoints and :func:`landscape.analyzers.analyze_model` builds one from a user's model.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

#: The columns every tidy table has, in this order; analysis-specific ones follow.
COLUMNS = ["run", "seed", "epoch", "loss", "layer", "metric", "value", "stderr", "n_matvecs"]
#: Extra columns some analyses add: slice offset ``k``, density abscissa ``x``, and the
#: epoch a pairwise analysis compared against.
EXTRA_COLUMNS = ["k", "x", "prev_epoch"]


class AnalysisError(ValueError):
    """A bad input to the analyzers, said in one line (the CLI prints it as is)."""


@dataclass
class Point:
    """One place in weight space to analyse.

    model:   the network; its parameters with ``requires_grad`` are the θ analysed
             (for a fake-quantized student: the latent full-precision weights, through the STE).
    losses:  ``{name: loss_fn}`` with ``loss_fn(model, batch) -> scalar`` (mean over the batch).
    batches: list of ``(x, y)`` batches; losses are the size-weighted mean over them.
    meta:    run, seed, epoch: copied into every row.
    """

    model: nn.Module
    losses: dict[str, Callable]
    batches: list
    meta: dict = field(default_factory=dict)
    params: Sequence[str] | None = None
    #: gradients already computed at this point, shared by the analyses (the weights do not
    #: change between analyses: slices restore them bit for bit)
    grads: dict = field(default_factory=dict, repr=False)
    #: Hessian operators already built at this point, so trace, eigen and density share one
    #: first-order graph per loss (the operator rebuilds it itself if the weights changed)
    hessians: dict = field(default_factory=dict, repr=False)

    def param_names(self) -> list[str]:
        """Names of the analysed parameters, in ``named_parameters`` order."""
        if self.params is not None:
            return list(self.params)
        return [n for n, p in self.model.named_parameters() if p.requires_grad]


def row(meta: dict, **values: Any) -> dict:
    """One tidy row: ``meta`` (run, seed, epoch) plus the given columns, NaN-filled."""
    out = {c: math.nan for c in COLUMNS}
    out["run"] = meta.get("run", "model")
    out["seed"] = meta.get("seed", math.nan)
    out["epoch"] = meta.get("epoch", math.nan)
    out["loss"] = ""
    out["layer"] = "all"
    out["n_matvecs"] = 0
    out.update(values)
    return out


def layer_of(param_name: str) -> str:
    """The layer (module path) a parameter belongs to: ``conv1.weight`` -> ``conv1``."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def layer_slices(model: nn.Module, names: Sequence[str]) -> list[tuple[str, slice]]:
    """Where each layer's parameters sit in the flat vector over ``names`` (in order)."""
    params = dict(model.named_parameters())
    out: list[tuple[str, slice]] = []
    start = 0
    for name in names:
        n = params[name].numel()
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
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    return float(a @ b / (na * nb))


def make_hessian(point: Point, loss_name: str, params: Sequence[str] | None = None):
    """The curvature engine's Hessian of one of the point's losses (one place to count HVPs),
    built once per (loss, params) and shared by the analyses of this point."""
    from landscape.curvature import Hessian

    names = list(params) if params is not None else point.param_names()
    key = (loss_name, tuple(names))
    if key not in point.hessians:
        point.hessians[key] = Hessian(point.model, point.losses[loss_name], point.batches, params=names)
    return point.hessians[key]


def flat_gradient(point: Point, loss_name: str, params: Sequence[str] | None = None) -> torch.Tensor:
    """The gradient of the mean loss over the point's batches, flat, in ``params`` order."""
    from landscape.curvature import gradient

    names = list(params) if params is not None else point.param_names()
    key = (loss_name, tuple(names))
    if key not in point.grads:
        g = gradient(point.model, point.losses[loss_name], point.batches, params=names)
        point.grads[key] = torch.as_tensor(g).detach().flatten()
    return point.grads[key]


# ----------------------------------------------------------------------------- names


def closest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ----------------------------------------------------------------------------- epochs


def select_epochs(spec: Any, epochs: Sequence[int], where: str = "epochs") -> list[int]:
    """Choose epochs from the available ones.

    ``"all"``; ``"last"``; ``"first"``; an int N: N epochs evenly spaced from the first to
    the last (all when fewer); a list of epoch numbers (those not present are ignored).
    """
    epochs = sorted(epochs)
    if not epochs:
        return []
    if spec is None or spec == "all":
        return list(epochs)
    if spec == "last":
        return [epochs[-1]]
    if spec == "first":
        return [epochs[0]]
    if isinstance(spec, bool):
        raise AnalysisError(f"{where} = {spec!r}: expected 'all', 'last', 'first', a count or a list of epochs")
    if isinstance(spec, int):
        if spec < 1:
            raise AnalysisError(f"{where} = {spec}: a count of epochs must be at least 1")
        if spec >= len(epochs):
            return list(epochs)
        if spec == 1:
            return [epochs[-1]]
        idx = sorted({round(i * (len(epochs) - 1) / (spec - 1)) for i in range(spec)})
        return [epochs[i] for i in idx]
    if isinstance(spec, (list, tuple)):
        wanted = {int(e) for e in spec}
        return [e for e in epochs if e in wanted]
    raise AnalysisError(f"{where} = {spec!r}: expected 'all', 'last', 'first', a count or a list of epochs")
