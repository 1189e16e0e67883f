"""What every analyzer shares: the tidy row, the analysed point, settings and epoch choice.

An analyzer sees a :class:`Point` -- a model, its named losses and the batches to evaluate
them on -- and returns tidy rows (:mod:`landscape.analyzers.tidy`), one observation each.

Nothing here knows about checkpoints or the trainer; the runner builds points from
checkpoints and :func:`landscape.analyzers.analyze_model` builds one from a user's model.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from landscape.analyzers.tidy import GROUP_PREFIX
from landscape.errors import LandscapeError


class AnalysisError(LandscapeError, ValueError):
    """A bad input to the analyzers, said in one line (the CLI prints it as is)."""


@dataclass
class Point:
    """One place in weight space to analyse.

    model:   the network; its parameters with ``requires_grad`` are the θ analysed
             (for a fake-quantized student: the latent full-precision weights, through the STE).
    losses:  ``{name: loss_fn}`` with ``loss_fn(model, batch) -> scalar`` (mean over the batch).
    batches: list of ``(x, y)`` batches; losses are the size-weighted mean over them.
    meta:    run, seed, epoch: copied into every row.
    identity: a content hash of the analysed weights (the checkpoint's); random probes are
             seeded from it (:func:`probe_seed`), so that every checkpoint draws its own.
    source:  where the point came from (a checkpoint path), named in every error about it.
    unavailable: ``{loss: reason}`` for losses that cannot be evaluated here (e.g. the
             teacher file of the KL is missing): analyses of other losses still run.
    groups:  a parameter grouping for per-group rows (``layer`` = ``"group:"`` + the group's name) of the trace,
             eigen and density analyses: a regex or a list of module prefixes, as for
             :meth:`CurvatureOperator.groups <landscape.curvature.base.CurvatureOperator.groups>`;
             ``qkv``: also the q, k and v parts of packed attention projections.
    extras:  checkpoint fields some analyses read (``epoch_grad``, the epoch's mean gradient).
    process_group: which ranks a mean over the batches spans, passed to every operator, gradient
             and loss the analyses build (:mod:`landscape.curvature.reduction`): None = the
             default group when ``torch.distributed`` is initialized (each rank holds a block of
             the batches), False = this process's batches alone (each rank its own checkpoint).
    """

    model: nn.Module
    losses: dict[str, Callable]
    batches: list
    meta: dict = field(default_factory=dict)
    params: Sequence[str] | None = None
    identity: str = ""
    source: str = ""
    unavailable: dict = field(default_factory=dict)
    groups: Any = None
    qkv: bool = False
    extras: dict = field(default_factory=dict)
    process_group: Any = None
    #: gradients already computed at this point, shared by the analyses (the weights do not
    #: change between analyses: slices restore them bit for bit)
    grads: dict = field(default_factory=dict, repr=False)
    #: mean losses already evaluated at this point (trace and eigen both report ``loss_value``)
    loss_values: dict = field(default_factory=dict, repr=False)
    #: curvature operators already built at this point, so trace, eigen and density share one
    #: first-order graph per loss (the operator rebuilds it itself if the weights changed)
    operators: dict = field(default_factory=dict, repr=False)

    def param_names(self) -> list[str]:
        """Names of the analysed parameters, in ``named_parameters`` order."""
        if self.params is not None:
            return list(self.params)
        from landscape.curvature.params import resolve_params

        return resolve_params(self.model, None)[0]

    def loss(self, name: str):
        """The loss function ``name``; an :class:`AnalysisError` saying why if it cannot be evaluated."""
        if name in self.unavailable:
            raise AnalysisError(f"{self.source or 'this point'}: loss {name!r} cannot be evaluated: "
                                f"{self.unavailable[name]}")
        if name not in self.losses:
            raise AnalysisError(f"{self.source or 'this point'}: no loss {name!r} (losses: {sorted(self.losses)})")
        return self.losses[name]

    def available(self, names) -> list[str]:
        """The losses among ``names`` that can be evaluated here (the runner reports the others)."""
        return [n for n in names if n in self.losses and n not in self.unavailable]


def probe_seed(point: Point, analysis: str, salt: int = 0) -> int:
    """The seed of one analysis's random probes at this point: a hash of the point's identity
    (its checkpoint's content), the analysis and the user's ``seed`` setting (``salt``).

    CE and KL at one checkpoint share it (common random numbers: their difference is sharper);
    different checkpoints get independent probes, so probe errors do not move a whole curve
    together. A point without identity hashes its parameters and buffers.
    """
    ident = point.identity or weights_hash(point.model)
    digest = hashlib.sha256(f"{ident}:{analysis}:{int(salt)}".encode()).hexdigest()
    return int(digest[:13], 16)  # 52 bits: exact in a float64 table column beside NaNs


def weights_hash(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make_operator(point: Point, loss_name: str, curvature: str = "hessian"):
    """The curvature engine's operator (``"hessian"``, ``"ggn"``, ...) of one of the point's losses
    over the point's parameters, built once per (curvature, loss) and shared by the analyses of
    this point; per-layer blocks are its views (``.layers()``), which share its graph."""
    from landscape.curvature import curvature_operator

    key = (curvature, loss_name)
    if key not in point.operators:
        point.operators[key] = curvature_operator(curvature, point.model, point.loss(loss_name), point.batches,
                                                  params=point.param_names(), process_group=point.process_group)
    return point.operators[key]


def group_views(point: Point, op) -> dict:
    """``{layer: view}`` of an operator for the point's ``groups`` (empty without a grouping), keyed
    by the rows' ``layer``: :data:`~landscape.analyzers.tidy.GROUP_PREFIX` + the group's name, so
    that a group named like a layer (a prefix grouping with ``per_layer``) gets rows of its own."""
    if point.groups is None:
        return {}
    return {GROUP_PREFIX + name: view for name, view in op.groups(point.groups, qkv=point.qkv).items()}


def flat_gradient(point: Point, loss_name: str, params: Sequence[str] | None = None) -> torch.Tensor:
    """The gradient of the mean loss over the point's batches, flat, in ``params`` order."""
    from landscape.curvature import gradient

    names = list(params) if params is not None else point.param_names()
    key = (loss_name, tuple(names))
    if key not in point.grads:
        g = gradient(point.model, point.loss(loss_name), point.batches, params=names,
                     process_group=point.process_group)
        point.grads[key] = torch.as_tensor(g).detach().flatten()
    return point.grads[key]


def loss_value(point: Point, loss_name: str) -> float:
    """``L(θ)``: the mean loss over the point's batches, evaluated once per point and loss (the
    weights do not change between analyses), so trace's and eigen's ``loss_value`` rows share one pass."""
    from landscape.curvature import mean_loss

    if loss_name not in point.loss_values:
        point.loss_values[loss_name] = float(mean_loss(point.model, point.loss(loss_name), point.batches,
                                                       process_group=point.process_group))
    return point.loss_values[loss_name]


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
