r"""DoReFa-Net weights (Zhou et al. 2016, arXiv:1606.06160, eq. 9).

    r   = tanh(w) / (2·max|tanh(w)|) + ½           ∈ [0, 1]   (max over the whole tensor)
    w_q = 2·quantize_k(r) − 1,   quantize_k(r) = round((2^k − 1)·r) / (2^k − 1)

Gradient as the paper defines it: the straight-through estimator on quantize_k
(∂quantize_k(r)/∂r = 1), everything else differentiated, the max included (as the authors'
tensorpack code does):

    ∂w_q/∂w = 2·∂r/∂w,   ∂r_i/∂w_j = δ_ij (1 − t_i²)/(2M) − t_i/(2M²) · ∂M/∂w_j,
    t = tanh(w),  M = max|t|,  ∂M/∂w_j = sign(t_j)(1 − t_j²) at the arg max j, else 0.

The levels are {2i/(2^k − 1) − 1}: w_q ∈ [−1, 1] whatever the scale of w (the paper relies
on the layers after it, BatchNorm, to absorb the scale); a layer not followed by a
normalization changes its output scale. Its backward is not the identity, so the Hessian the
engine reports includes tanh's curvature (see :mod:`landscape.quant.frozen`).
"""

from __future__ import annotations

import torch
from torch import nn


class DoReFaWeight(nn.Module):
    """DoReFa k-bit weight quantizer."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = int(bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(w)
        r = t / (2 * t.abs().max()) + 0.5
        n = 2 ** self.bits - 1
        r_q = r + (torch.round(r * n) / n - r).detach()
        return 2 * r_q - 1

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
