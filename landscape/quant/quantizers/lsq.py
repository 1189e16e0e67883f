r"""LSQ: learned step size quantization (Esser et al. 2020, ICLR, arXiv:1902.08153).

One learned step s per tensor. With Q_N, Q_P the code range (weights signed:
Q_N = 2^(b−1), Q_P = 2^(b−1) − 1; activations unsigned: Q_N = 0, Q_P = 2^b − 1):

    v̂ = round(clip(v/s, −Q_N, Q_P)) · s

Gradients as the paper defines them (straight-through estimator on round):

    ∂v̂/∂v = 1 if −Q_N < v/s < Q_P, else 0
    ∂v̂/∂s = −v/s + round(v/s)   if −Q_N < v/s < Q_P
            −Q_N                 if v/s ≤ −Q_N
            Q_P                  if v/s ≥ Q_P

and the step's gradient is scaled by g = 1/√(N·Q_P), N the number of weights of the layer
(:class:`LSQ`) or of features of the activation, per sample (:class:`LSQAct`): the forward
value of s is unchanged and ∂L/∂s is multiplied by g (``s·g + (s − s·g).detach()``).

The step is initialised as the paper does, 2·mean|v|/√Q_P, from the first tensor the
quantizer sees (the weight, when quantize_model calls it once; the first activation batch).
s is an ``nn.Parameter`` trained with the student (quantize_model marks it auxiliary: not a
curvature parameter unless named); ``initialized`` is a buffer, so a checkpoint restores it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x in the forward pass, g·∂L/∂x in the backward pass."""
    return x * g + (x - x * g).detach()


def round_pass(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, the identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


class LSQ(nn.Module):
    """LSQ weight quantizer (signed codes, N = every element of the tensor)."""

    signed = True

    def __init__(self, bits: int):
        super().__init__()
        self.bits = int(bits)
        self.q_n = 2 ** (self.bits - 1) if self.signed else 0
        self.q_p = 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def n_elements(self, x: torch.Tensor) -> int:
        """N of the gradient scale: every weight of the layer."""
        return x.numel()

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """s = 2·mean|x|/√Q_P (the paper's initialisation)."""
        self.step.copy_(2 * x.detach().abs().mean() / math.sqrt(self.q_p))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        s = grad_scale(self.step.to(x.dtype), 1.0 / math.sqrt(self.n_elements(x) * self.q_p))
        return round_pass(torch.clamp(x / s, -self.q_n, self.q_p)) * s

    def extra_repr(self) -> str:
        return f"bits={self.bits}, q_n={self.q_n}, q_p={self.q_p}"


class LSQAct(LSQ):
    """LSQ activation quantizer (unsigned codes, N = features per sample)."""

    signed = False

    def n_elements(self, x: torch.Tensor) -> int:
        """N of the gradient scale: the features of one sample."""
        return x[0].numel() if x.dim() > 1 else x.numel()
