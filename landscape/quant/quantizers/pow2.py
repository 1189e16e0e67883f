r"""Power-of-two (logarithmic) weights, per output channel, identity STE.

With b bits (one for the sign), L = 2^(b−1) − 1 non-zero magnitudes and zero. For channel c
with m_c = max|w_c|, the levels are

    {0} ∪ {± m_c · 2^(−j) : j = 0, …, L − 1}

and each weight goes to the nearest level (by |w − level|; a tie to the smaller magnitude):
with r = |w|/m_c, the magnitude 2^e with e = ⌈log₂(r/0.75)⌉ − 1 for r > 0.75·2^(−(L−1)) (the
midpoint between 2^(e−1) and 2^e is 0.75·2^e); below that, 2^(−(L−1)) if r > ½·2^(−(L−1)),
else 0. The forward value is ŵ = sign(w)·m_c·2^e (or 0); the backward is the identity
(``w + (ŵ − w).detach()``), as in Miyashita et al. 2016 and INQ (Zhou et al. 2017): a
multiplication by ŵ is a shift.
"""

from __future__ import annotations

import torch
from torch import nn


def pow2_levels(bits: int) -> torch.Tensor:
    """The magnitudes 2^(−j), j = 0 … 2^(b−1) − 2, largest first (times m_c they are the levels)."""
    return 2.0 ** -torch.arange(2 ** (bits - 1) - 1, dtype=torch.float64)


class Pow2Weight(nn.Module):
    """Per-output-channel power-of-two weight quantizer."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = int(bits)

    @torch.no_grad()
    def offset(self, w: torch.Tensor) -> torch.Tensor:
        """c = ŵ − w (detached)."""
        w = w.detach()
        shape = (w.shape[0],) + (1,) * (w.dim() - 1)
        m = w.reshape(w.shape[0], -1).abs().amax(dim=1).reshape(shape)
        r = w.abs() / m.clamp_min(torch.finfo(w.dtype).tiny)
        smallest = -(2 ** (self.bits - 1) - 2)  # exponent of the smallest non-zero level
        e = (torch.ceil(torch.log2(r / 0.75)) - 1).clamp(max=0)
        mag = torch.where(e >= smallest, torch.exp2(e.clamp(min=smallest)),
                          torch.where(r > 0.5 * 2.0 ** smallest, torch.full_like(r, 2.0 ** smallest),
                                      torch.zeros_like(r)))
        return torch.sign(w) * m * mag - w

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.offset(w)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
