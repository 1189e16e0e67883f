r"""An adapter around ``torch.ao.quantization.FakeQuantize`` (observer based).

Weights (:class:`TorchAOWeight`): per output channel, affine, signed codes
[−2^(b−1), 2^(b−1) − 1], a ``PerChannelMinMaxObserver`` reset at every call, so the grid
follows the current weight. The observer's range always contains 0 (torch.ao's rule:
[min(min_c, 0), max(max_c, 0)]), and

    s_c = (max_c − min_c)/(2^b − 1),  z_c = clamp(q_min − round(min_c/s_c), q_min, q_max)   (integers)
    ŵ   = (clamp(round(w/s_c) + z_c, q_min, q_max) − z_c) · s_c

Activations (:class:`TorchAOAct`): per tensor, affine, unsigned codes [0, 2^b − 1], a
``MovingAverageMinMaxObserver`` (averaging constant ``1 − momentum``, 0.1 by default, our
ActQuant's EMA) that observes only while ``calibrating`` (the trainer's warm-up,
:func:`~landscape.quant.calibrate`); before it has observed anything it passes x through.

The backward is FakeQuantize's own: the identity where the rounded code lies in
[q_min, q_max], 0 where it was clamped (with the weight grid from the current range, no
weight is clamped). torch.ao stores scale and zero point in float32 and computes the
fake-quantized value at float32 precision whatever the model's dtype (a float64 model gets
values within ~1e-7 of the exact grid; its gradients are exact). b ≤ 8 uses ``torch.qint8`` / ``torch.quint8`` codes, b > 8 ``torch.qint32``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, PerChannelMinMaxObserver


class _FloatScale(nn.Module):
    """Keeps FakeQuantize's scale in float32 (its kernels take no other) when the model is
    moved to another dtype (``.double()``, ``.to(dtype)``); the tensor quantized keeps its dtype."""

    fq: FakeQuantize

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.fq.scale.dtype != torch.float32:
            self.fq.scale = self.fq.scale.float()
        return out


class TorchAOWeight(_FloatScale):
    """torch.ao FakeQuantize, per-channel affine weights, observer reset at every call."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = int(bits)
        self.fq = FakeQuantize(observer=PerChannelMinMaxObserver, quant_min=-(2 ** (bits - 1)),
                               quant_max=2 ** (bits - 1) - 1, dtype=torch.qint8 if bits <= 8 else torch.qint32,
                               qscheme=torch.per_channel_affine, ch_axis=0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self.fq.activation_post_process.reset_min_max_vals()
        return self.fq(w)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class TorchAOAct(_FloatScale):
    """torch.ao FakeQuantize, per-tensor affine activations, a moving-average observer while calibrating."""

    def __init__(self, bits: int, momentum: float = 0.9):
        super().__init__()
        self.bits = int(bits)
        self.calibrating = False
        self.fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=2 ** bits - 1,
                               dtype=torch.quint8 if bits <= 8 else torch.qint32,
                               qscheme=torch.per_tensor_affine, averaging_constant=1.0 - momentum)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.fq.enable_observer()
            self.initialized.fill_(True)
        else:
            self.fq.disable_observer()
        if not bool(self.initialized):
            return x
        return self.fq(x)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
