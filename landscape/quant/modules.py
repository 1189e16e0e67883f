"""Fake-quantized modules: QuantConv2d, QuantLinear and the generated quantized classes
(weights), ActQuant and ActQuantPerCall (activations).

QuantConv2d / QuantLinear subclass nn.Conv2d / nn.Linear and keep their state-dict keys,
so a teacher's weights load into a student unchanged. The latent full-precision weight is
the parameter; the forward pass uses its dequantized value through the identity STE. The
attribute ``zero_point`` (``"integral"``, the official grid, or ``"float"``) picks the weight
grid (see :mod:`.functional`); it is not in the state dict. A layer quantized by another
quantizer of the interface holds it as the sub-module ``wq`` (state-dict keys
``<layer>.wq.*``) and uses ``wq(weight)`` in its forward pass; ``zero_point`` is then unused.

Any other weight module -- a subclass of nn.Linear (MHA's out_proj), GPT-2's Conv1D,
nn.MultiheadAttention -- becomes a class generated once by :func:`quant_class`, a subclass of
its own class and of :class:`_Substituted`: its own forward runs with ŵ in place of each
quantized parameter (``quantized_params``: ``weight``, or MHA's ``in_proj_weight`` /
``q_proj_weight``...), put into ``_parameters`` for the call and taken out after it, so the
parameter stays the float leaf that gradients and curvature are taken with respect to.

ActQuant follows a ReLU. Its range is an EMA (momentum 0.9) of batch min/max while
``calibrating`` is True (the warm-up) and frozen otherwise; the range lives in buffers, so
it is saved with the student's state dict. Before any calibration it passes x through.
Its behaviour does not depend on ``train()``/``eval()``: the student always runs with its
BatchNorm in eval mode (full-precision running statistics).

ActQuantPerCall holds one ActQuant per call site of a ReLU module that the model calls more
than once (e.g. torchvision's BasicBlock calls ``self.relu`` twice): the i-th call of a
forward pass uses quantizer i, so each site has its own range.

QuantConv2d / QuantLinear have a ``_frozen`` slot that :func:`landscape.quant.frozen_rounding`
fills: while it is set, the rounding offset recorded at θ replaces the weight quantizer (an
activation quantizer's ``forward`` is replaced there instead, for every quantizer of the interface).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from landscape.quant import functional as Q
from landscape.quant.errors import QuantizationError


def quantizer_attr(param: str) -> str:
    """The sub-module name of the quantizer of parameter ``param``: ``wq`` for ``weight`` (the
    state-dict keys of issue 16), ``wq_<param>`` otherwise (``wq_in_proj_weight``)."""
    return "wq" if param == "weight" else f"wq_{param}"


class _QuantWeight:
    """Mixin: the fake-quantized parameters of a module (``quantized_params``, ``("weight",)``
    for a layer): each used in the forward pass as w + c, c the (detached) rounding offset of
    the official grid, or as ``wq(w)`` when the module holds another quantizer for it
    (:func:`quantizer_attr`). ``transposed``: the weight is stored (in, out) (GPT-2's Conv1D);
    its quantizer sees (out, in), so channels and groups run along the right dimensions."""

    w_bits: int
    zero_point: str = "integral"
    quantized_params: tuple[str, ...] = ("weight",)
    transposed: bool = False
    _frozen: dict[str, torch.Tensor] | None = None  # c per parameter, held fixed by frozen_rounding

    def param_quantizer(self, param: str = "weight") -> nn.Module | None:
        """The quantizer module of ``param``, or None on the built-in uniform path."""
        return self._modules.get(quantizer_attr(param))

    @property
    def weight_quantizer(self) -> nn.Module | None:
        """The layer's weight quantizer module (``wq``), or None on the built-in uniform path."""
        return self.param_quantizer("weight")

    def _oriented(self, t: torch.Tensor) -> torch.Tensor:
        return t.t() if self.transposed else t

    def param_offset(self, param: str = "weight") -> torch.Tensor:
        """c = ŵ − w of ``param`` at its current value (detached)."""
        w = self._parameters[param]
        wq = self.param_quantizer(param)
        if wq is None:
            return self._oriented(Q.weight_offset(self._oriented(w), self.w_bits, self.zero_point))
        from landscape.quant.interface import offset_of

        c = offset_of(wq, self._oriented(w))
        return torch.zeros_like(w) if c is None else self._oriented(c)

    def quantized_param(self, param: str = "weight") -> torch.Tensor:
        """ŵ of ``param`` as the forward pass uses it (differentiable in w through the STE)."""
        w = self._parameters[param]
        if self._frozen is not None:
            return w + self._frozen[param]
        wq = self.param_quantizer(param)
        if wq is not None:
            return self._oriented(wq(self._oriented(w)))
        return w + self.param_offset(param)

    def quantized_parameters(self) -> dict[str, torch.Tensor]:
        """``{parameter name: ŵ}`` for every quantized parameter of this module (names local to it)."""
        return {p: self.quantized_param(p) for p in self.quantized_params}

    def weight_offset(self) -> torch.Tensor:
        """c = ŵ − w at the current weight (detached)."""
        return self.param_offset("weight")

    def quantized_weight(self) -> torch.Tensor:
        return self.quantized_param("weight")

    def extra_repr(self):
        grid = "" if all(self.param_quantizer(p) is not None for p in self.quantized_params) \
            else f", zero_point={self.zero_point!r}"
        return ", ".join(filter(None, [super().extra_repr(), f"w_bits={self.w_bits}{grid}"]))


class QuantConv2d(_QuantWeight, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_QuantWeight, nn.Linear):
    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)


class _Substituted(_QuantWeight):
    """Mixin for a module whose own forward reads its parameters (a subclass of nn.Linear,
    GPT-2's Conv1D, nn.MultiheadAttention): for the duration of the float class's forward,
    each quantized parameter's entry in ``_parameters`` holds ŵ (differentiable in w through
    the STE) and is restored afterwards, also on error. ``substitute_children``: child modules
    whose parameters this forward reads without calling the child (MHA's ``out_proj``)."""

    substitute_children: tuple[str, ...] = ()
    _float_forward = None  # the float class's forward, set on each generated class

    def forward(self, *args, **kwargs):
        owners = [self] + [c for c in (self._modules.get(n) for n in self.substitute_children)
                           if isinstance(c, _QuantWeight)]
        saved = []
        try:
            for m in owners:
                for p in m.quantized_params:
                    value = m.quantized_param(p)
                    saved.append((m, p, m._parameters[p]))
                    m._parameters[p] = value
            return type(self)._float_forward(self, *args, **kwargs)
        finally:
            for m, p, original in reversed(saved):
                m._parameters[p] = original


_GENERATED: dict[type, type] = {}


def quant_class(cls: type) -> type:
    """The fake-quantized class of a float module class: QuantConv2d / QuantLinear for exactly
    nn.Conv2d / nn.Linear (their own forward); for any other class (a subclass of nn.Linear,
    GPT-2's Conv1D, nn.MultiheadAttention) a subclass of it and of :class:`_Substituted`,
    generated once and registered in this module under its name (so students pickle)."""
    if cls is nn.Conv2d:
        return QuantConv2d
    if cls is nn.Linear:
        return QuantLinear
    if cls not in _GENERATED:
        name = f"Quant{cls.__name__}"
        while name in globals():
            name += "_"
        body = {"_float_forward": cls.forward, "__module__": __name__, "__qualname__": name}
        if issubclass(cls, nn.MultiheadAttention):
            body["substitute_children"] = ("out_proj",)
        _GENERATED[cls] = globals()[name] = type(name, (_Substituted, cls), body)
    return _GENERATED[cls]


class ActQuant(nn.Module):
    def __init__(self, bits: int, momentum: float = 0.9):
        super().__init__()
        self.bits = int(bits)
        self.momentum = float(momentum)
        self.calibrating = False
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach())
        if bool(self.initialized):
            m = self.momentum
            lo, hi = m * self.lo + (1 - m) * lo, m * self.hi + (1 - m) * hi
        self.lo.copy_(lo)
        self.hi.copy_(hi)
        self.initialized.fill_(True)

    def offset(self, x: torch.Tensor) -> torch.Tensor | None:
        """c = x̂ − x under the current range (detached); None before calibration (pass-through)."""
        if not bool(self.initialized):
            return None
        return Q.act_offset(x, self.lo, self.hi, self.bits)

    def forward(self, x):
        if self.calibrating:
            self._update(x)
        c = self.offset(x)
        return x if c is None else x + c

    def extra_repr(self):
        return f"bits={self.bits}, momentum={self.momentum}"


class ActQuantPerCall(nn.ModuleList):
    """One ActQuant per call site of a shared activation module; call i of a pass uses site i.

    ``sites`` names the call sites (from torch.fx) in call order. The counter restarts at every
    forward of the model (a pre-hook that :func:`~landscape.quant.quantize_model` registers)
    and otherwise cycles, so calling the block that holds the sites directly also works.
    """

    def __init__(self, quantizers: list[ActQuant], sites: list[str]):
        super().__init__(quantizers)
        self.sites = list(sites)
        self.calls = 0

    def forward(self, x):
        q = self[self.calls % len(self)]
        self.calls += 1
        return q(x)

    def extra_repr(self):
        return f"sites={len(self)}"


class CallCounters:
    """The model's hooks for its ActQuantPerCall modules (picklable and deep-copyable with it):
    as a forward pre-hook (``check=False``) it restarts every counter; as a forward hook
    (``check=True``) it checks that each was called once per call site."""

    def __init__(self, per_call: list[tuple[str, ActQuantPerCall]], check: bool):
        self.per_call = per_call
        self.check = check

    def __call__(self, module, *args):
        for name, m in self.per_call:
            if not self.check:
                m.calls = 0
            elif m.calls not in (0, len(m)):
                raise QuantizationError(
                    f"{name}: called {m.calls} times in one forward pass, but torch.fx found {len(m)} call "
                    f"sites ({'; '.join(m.sites)}) when quantize_model gave it one activation quantizer per "
                    f"site; the model's control flow has changed since: quantize the model again")


def _to_quant(module: nn.Module, cls, bits: int, zero_point: str = "integral",
              quantizer: nn.Module | None = None, *, params: tuple[str, ...] = ("weight",),
              quantizers: dict[str, nn.Module] | None = None, transposed: bool = False) -> nn.Module:
    """Turn ``module`` into ``cls`` in place, quantizing its parameters ``params``;
    ``quantizer``: another quantizer for ``weight`` (as ``wq``), ``quantizers``: one per
    parameter ({param: module}, held as :func:`quantizer_attr`)."""
    module.__class__ = cls  # same parameters and buffers; only forward changes
    module.w_bits = int(bits)
    module.zero_point = Q.check_zero_point(zero_point)
    if tuple(params) != ("weight",):
        module.quantized_params = tuple(params)
    if transposed:
        module.transposed = True
    quantizers = dict(quantizers or {})
    if quantizer is not None:
        quantizers["weight"] = quantizer
    for param, q in quantizers.items():
        module.add_module(quantizer_attr(param), q)
    return module
