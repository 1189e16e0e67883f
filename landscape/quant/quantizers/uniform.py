r"""The default quantizer: asymmetric uniform on the official GDFQ/AIT grid, identity STE.

Weights (:class:`UniformWeight`), per output channel c, step and zero point from the
channel's current range (see :mod:`landscape.quant.functional` for the grid):

    s_c = (max_c − min_c) / (2^b − 1),   z_c = −round(min_c / s_c) − 2^(b−1)   ("integral")
    ŵ   = s_c · (clamp(round(w / s_c + z_c), −2^(b−1), 2^(b−1) − 1) − z_c)
    forward ŵ,   ∂ŵ/∂w := 1  (identity STE: w + (ŵ − w).detach())

Activations (:class:`UniformAct`, the same class as :class:`~landscape.quant.ActQuant`): one
per-tensor range [lo, hi], an EMA (momentum m) of batch min/max while calibrating, the float
zero point, identity STE; before any calibration it passes x through.

With ``group_size = g`` the range (and so s and z) is per group of g consecutive inputs of each
output channel instead (GPTQ/AWQ-style per-group round-to-nearest; :mod:`landscape.quant.groups`,
the last group shorter when g does not divide the input dimension).

``quantize_model(..., weight="uniform")`` (the default, per channel) does not place a ``UniformWeight``
module: the quantized layer computes the same ŵ itself, so checkpoints keep their keys and the
numbers are those of the code before the quantizer interface, bit for bit. The class is here
for direct use and as the reference the other quantizers are compared with.
"""

from __future__ import annotations

import torch
from torch import nn

from landscape.quant import functional as Q
from landscape.quant.groups import check_group_size
from landscape.quant.modules import ActQuant

UniformAct = ActQuant


class UniformWeight(nn.Module):
    """Per-output-channel (or per-group) uniform weight quantizer (``zero_point``: "integral" or
    "float"; ``group_size``: None or inputs per group)."""

    def __init__(self, bits: int, zero_point: str = "integral", group_size: int | None = None):
        super().__init__()
        self.bits = int(bits)
        self.zero_point = Q.check_zero_point(zero_point)
        self.group_size = check_group_size(group_size)

    def offset(self, w: torch.Tensor) -> torch.Tensor:
        """c = ŵ − w (detached)."""
        return Q.weight_offset(w, self.bits, self.zero_point, self.group_size)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.offset(w)

    def extra_repr(self) -> str:
        group = "" if self.group_size is None else f", group_size={self.group_size}"
        return f"bits={self.bits}, zero_point={self.zero_point!r}{group}"
