"""Fake-quantized modules: QuantConv2d, QuantLinear (weights) and ActQuant (activations).

QuantConv2d / QuantLinear subclass nn.Conv2d / nn.Linear and keep their state-dict keys,
so a teacher's weights load into a student unchanged. The latent full-precision weight is
the parameter; the forward pass uses its dequantized value through the identity STE.

ActQuant follows a ReLU. Its range is an EMA (momentum 0.9) of batch min/max while
``calibrating`` is True (the warm-up) and frozen otherwise; the range lives in buffers, so
it is saved with the student's state dict. Before any calibration it passes x through.
Its behaviour does not depend on ``train()``/``eval()``: the student always runs with its
BatchNorm in eval mode (full-precision running statistics).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from landscape.quant import functional as Q


class QuantConv2d(nn.Conv2d):
    w_bits: int

    def quantized_weight(self) -> torch.Tensor:
        return Q.fake_quant_weight(self.weight, self.w_bits)

    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self):
        return super().extra_repr() + f", w_bits={self.w_bits}"


class QuantLinear(nn.Linear):
    w_bits: int

    def quantized_weight(self) -> torch.Tensor:
        return Q.fake_quant_weight(self.weight, self.w_bits)

    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self):
        return super().extra_repr() + f", w_bits={self.w_bits}"


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

    def forward(self, x):
        if self.calibrating:
            self._update(x)
        if not bool(self.initialized):
            return x
        return Q.fake_quant_act(x, self.lo, self.hi, self.bits)

    def extra_repr(self):
        return f"bits={self.bits}, momentum={self.momentum}"


def _to_quant(module: nn.Module, cls, bits: int) -> nn.Module:
    module.__class__ = cls  # same parameters and buffers; only forward changes
    module.w_bits = int(bits)
    return module
