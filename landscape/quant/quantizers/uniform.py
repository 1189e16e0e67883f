r"""The default quantizer: asymmetric uniform on the official GDFQ/AIT grid, identity STE.

Weights (:class:`UniformWeight`), per output channel c, step and zero point from the
channel's current range (see :mod:`landscape.quant.functional` for the grid):

    s_c = (max_c − min_c) / (2^b − 1),   z_c = −round(min_c / s_c) − 2^(b−1)   ("integral")
    ŵ   = s_c · (clamp(round(w / s_c + z_c), −2^(b−1), 2^(b−1) − 1) − z_c)
    forward ŵ,   ∂ŵ/∂w := 1  (identity STE: w + (ŵ − w).detach())

Activations (:class:`UniformAct`, the same class as :class:`~landscape.quant.ActQuant`): one
per-tensor range [lo, hi], an EMA (momentum m) of batch min/max while calibrating, the float
zero point, identity STE; before any calibration it passes x through.

``quantize_model(..., weight="uniform")`` (the default) does not place a ``UniformWeight``
module: the quantized layer computes the same ŵ itself, so checkpoints keep their keys and the
numbers are those of the code before the quantizer interface, bit for bit. The class is here
for direct use and as the reference the other quantizers are compared with.
"""

from __future__ import annotations

import torch
from torch import nn

from landscape.quant import functional as Q
from landscape.quant.modules import ActQuant

UniformAct = ActQuant


class UniformWeight(nn.Module):
    """Per-output-channel uniform weight quantizer (``zero_point``: "integral" or "float")."""

    def __init__(self, bits: int, zero_point: str = "integral"):
        super().__init__()
        self.bits = int(bits)
        self.zero_point = Q.check_zero_point(zero_point)

    def offset(self, w: torch.Tensor) -> torch.Tensor:
        """c = ŵ − w (detached)."""
        return Q.weight_offset(w, self.bits, self.zero_point)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.offset(w)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, zero_point={self.zero_point!r}"
