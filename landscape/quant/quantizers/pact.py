r"""PACT: parameterized clipping activation (Choi et al. 2018, arXiv:1805.06085).

A learned clipping level α per activation tensor, then k-bit uniform quantization of [0, α]:

    y   = PACT(x) = ½(|x| − |x − α| + α) = clip(x, 0, α)
    y_q = round(y · (2^k − 1)/α) · α/(2^k − 1)

Gradients as the paper defines them (the straight-through estimator on round, ∂y_q/∂y = 1):

    ∂y_q/∂x = 1 if 0 ≤ x < α, else 0
    ∂y_q/∂α = 1 if x ≥ α,     else 0

α is an ``nn.Parameter`` trained with the student; the paper's L2 penalty on α is the
optimizer's weight decay. quantize_model marks it auxiliary: not a curvature parameter unless
named. Initialisation (our choice, stated here): by default α is set on the first call to
the largest value of that batch (the first calibration batch), as LSQ sets its step from
the first batch; ``PACT(bits, alpha=10.0)`` starts from the paper's 10 instead. Since α only
receives gradient where x ≥ α, an α far above every activation (10 on a network whose
activations stay below 3) never moves without weight decay, and quantizes [0, α] with a step
α/(2^k − 1) far coarser than the data. PACT replaces the ReLU in the paper; here it follows
the model's ReLU (x ≥ 0 already), which changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn


class PACT(nn.Module):
    """PACT activation quantizer with ``bits`` bits and a learned clip ``alpha``."""

    def __init__(self, bits: int, alpha: float | None = None):
        super().__init__()
        self.bits = int(bits)
        self.alpha = nn.Parameter(torch.tensor(10.0 if alpha is None else float(alpha)))
        self.register_buffer("initialized", torch.tensor(alpha is not None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            with torch.no_grad():
                self.alpha.copy_(x.detach().amax().clamp_min(torch.finfo(x.dtype).tiny))
                self.initialized.fill_(True)
        alpha = self.alpha.to(x.dtype)
        y = torch.where(x >= alpha, alpha, x.clamp_min(0))  # clip(x, 0, α); ∂/∂α = 1 exactly where x ≥ α
        n = 2 ** self.bits - 1
        y_q = torch.round(y.detach() * n / alpha.detach()) * alpha.detach() / n
        return y + (y_q - y.detach()).detach()  # STE: ∂y_q/∂y = 1

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
