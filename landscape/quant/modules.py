"""Fake-quantized modules: QuantConv2d, QuantLinear (weights), ActQuant and ActQuantPerCall
(activations).

QuantConv2d / QuantLinear subclass nn.Conv2d / nn.Linear and keep their state-dict keys,
so a teacher's weights load into a student unchanged. The latent full-precision weight is
the parameter; the forward pass uses its dequantized value through the identity STE. The
attribute ``zero_point`` (``"integral"``, the official grid, or ``"float"``) picks the weight
grid (see :mod:`.functional`); it is not in the state dict. A layer quantized by another
quantizer of the interface holds it as the sub-module ``wq`` (state-dict keys
``<layer>.wq.*``) and uses ``wq(weight)`` in its forward pass; ``zero_point`` is then unused.

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
from landscape.quant.errors import CallSiteError


class _QuantWeight:
    """Mixin: the weight the forward pass uses: w + c, c the (detached) rounding offset of the
    official grid, or ``wq(w)`` when the layer holds another quantizer as ``wq``."""

    w_bits: int
    zero_point: str = "integral"
    _frozen: torch.Tensor | None = None  # c_w held fixed by frozen_rounding

    @property
    def weight_quantizer(self) -> nn.Module | None:
        """The layer's quantizer module (``wq``), or None on the built-in uniform path."""
        return self._modules.get("wq")

    def weight_offset(self) -> torch.Tensor:
        """c = ŵ − w at the current weight (detached)."""
        wq = self._modules.get("wq")
        if wq is None:
            return Q.weight_offset(self.weight, self.w_bits, self.zero_point)
        from landscape.quant.interface import offset_of

        c = offset_of(wq, self.weight)
        return torch.zeros_like(self.weight) if c is None else c

    def quantized_weight(self) -> torch.Tensor:
        if self._frozen is not None:
            return self.weight + self._frozen
        wq = self._modules.get("wq")
        if wq is not None:
            return wq(self.weight)
        return self.weight + self.weight_offset()

    def extra_repr(self):
        if self._modules.get("wq") is not None:
            return super().extra_repr() + f", w_bits={self.w_bits}"
        return super().extra_repr() + f", w_bits={self.w_bits}, zero_point={self.zero_point!r}"


class QuantConv2d(_QuantWeight, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_QuantWeight, nn.Linear):
    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)


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
                raise CallSiteError(
                    f"{name}: called {m.calls} times in one forward pass, but torch.fx found {len(m)} call "
                    f"sites ({'; '.join(m.sites)}) when quantize_model gave it one activation quantizer per "
                    f"site; the model's control flow has changed since: quantize the model again")


def _to_quant(module: nn.Module, cls, bits: int, zero_point: str = "integral",
              quantizer: nn.Module | None = None) -> nn.Module:
    """Turn ``module`` into ``cls`` in place; ``quantizer``: another quantizer as ``wq``."""
    module.__class__ = cls  # same parameters and buffers; only forward changes
    module.w_bits = int(bits)
    module.zero_point = Q.check_zero_point(zero_point)
    if quantizer is not None:
        module.add_module("wq", quantizer)
    return module
