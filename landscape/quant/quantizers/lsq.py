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
Per group (``LSQ(bits, group_size=g)``, weights only): one learned step per group of g
consecutive inputs of each output channel (:mod:`landscape.quant.groups`; the last group
shorter when g does not divide the input dimension), a step tensor of shape (out, G) set on
the first call, each initialised as above from its own group, each with N = its group's size
in the gradient scale.

s is an ``nn.Parameter`` trained with the student (quantize_model marks it auxiliary: not a
curvature parameter unless named); ``initialized`` is a buffer, so a checkpoint restores it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from landscape.quant import groups as G


def grad_scale(x: torch.Tensor, g: "float | torch.Tensor") -> torch.Tensor:
    """x in the forward pass, g·∂L/∂x in the backward pass."""
    return x * g + (x - x * g).detach()


def round_pass(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, the identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


class LSQ(nn.Module):
    """LSQ weight quantizer (signed codes, N = every element of the tensor; or one step per
    group of ``group_size`` inputs, N = the group's size)."""

    signed = True

    def __init__(self, bits: int, group_size: int | None = None):
        super().__init__()
        self.bits = int(bits)
        self.group_size = G.check_group_size(group_size)
        self.q_n = 2 ** (self.bits - 1) if self.signed else 0
        self.q_p = 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def n_elements(self, x: torch.Tensor) -> int:
        """N of the gradient scale: every weight of the layer."""
        return x.numel()

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """s = 2·mean|x|/√Q_P (the paper's initialisation), per group with ``group_size``."""
        if self.group_size is None:
            self.step.copy_(2 * x.detach().abs().mean() / math.sqrt(self.q_p))
        else:  # a step per group: its shape is known only now
            step = 2 * G.group_abs_mean(x.detach(), self.group_size) / math.sqrt(self.q_p)
            self.step = nn.Parameter(step.to(self.step.dtype))
        self.initialized.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        step = state_dict.get(prefix + "step")  # a per-group step from a checkpoint: take its shape
        if step is not None and step.shape != self.step.shape and self.group_size is not None:
            self.step = nn.Parameter(torch.empty_like(step, dtype=self.step.dtype, device=self.step.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        if self.group_size is None:
            s = grad_scale(self.step.to(x.dtype), 1.0 / math.sqrt(self.n_elements(x) * self.q_p))
        else:
            n = G.group_sizes(x, self.group_size).to(device=x.device, dtype=x.dtype)
            s = G.expand(grad_scale(self.step.to(x.dtype), 1.0 / torch.sqrt(n * self.q_p)), x, self.group_size)
        return round_pass(torch.clamp(x / s, -self.q_n, self.q_p)) * s

    def extra_repr(self) -> str:
        group = "" if self.group_size is None else f", group_size={self.group_size}"
        return f"bits={self.bits}, q_n={self.q_n}, q_p={self.q_p}{group}"


class LSQAct(LSQ):
    """LSQ activation quantizer (unsigned codes, N = features per sample)."""

    signed = False

    def n_elements(self, x: torch.Tensor) -> int:
        """N of the gradient scale: the features of one sample."""
        return x[0].numel() if x.dim() > 1 else x.numel()
