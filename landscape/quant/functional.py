"""Quantization arithmetic as pure functions (no modules, no state).

Asymmetric uniform quantization with a float zero point (GDFQ / ZeroQ):

    scale      s = (max - min) / (2^b - 1)            (max - min clamped to >= 1e-8)
    zero point z = -min / s - 2^(b-1)
    code       q = clamp(round(x / s + z), -2^(b-1), 2^(b-1) - 1)
    dequant    x^ = s * (q - z)                         |x - x^| <= s / 2 inside [min, max]

Weights use one (min, max) per output channel, activations one per tensor.
The straight-through estimator is ``x + (x^ - x).detach()``: the forward value is x^, the
derivative w.r.t. x is exactly the identity and every higher derivative of the loss w.r.t.
x equals that of the loss w.r.t. x^ (the detached term is a constant), so double-backward
Hessian-vector products go through it unchanged.
"""

from __future__ import annotations

import torch


def qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def scale_zero_point(lo: torch.Tensor, hi: torch.Tensor, bits: int):
    """Scale and (float) zero point from a range [lo, hi] (tensors broadcastable to x)."""
    scale = (hi - lo).clamp_min(1e-8) / (2 ** bits - 1)
    zero_point = -lo / scale - 2 ** (bits - 1)
    return scale, zero_point


def quantize(x: torch.Tensor, scale, zero_point, bits: int) -> torch.Tensor:
    """Integer codes (as a float tensor) of x."""
    lo, hi = qrange(bits)
    return torch.clamp(torch.round(x / scale + zero_point), lo, hi)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    return scale * (q - zero_point)


def weight_range(w: torch.Tensor):
    """Per-output-channel (min, max) of a weight, shaped to broadcast against it."""
    flat = w.detach().reshape(w.shape[0], -1)
    shape = (w.shape[0],) + (1,) * (w.dim() - 1)
    return flat.min(dim=1).values.reshape(shape), flat.max(dim=1).values.reshape(shape)


def weight_qparams(w: torch.Tensor, bits: int):
    lo, hi = weight_range(w)
    return scale_zero_point(lo, hi, bits)


def weight_codes(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of a weight tensor under its own per-channel min/max (LongTensor)."""
    scale, zp = weight_qparams(w, bits)
    return quantize(w.detach(), scale, zp, bits).long()


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Dequantized weight in the forward pass, identity STE in the backward pass."""
    scale, zp = weight_qparams(w, bits)
    w_hat = dequantize(quantize(w.detach(), scale, zp, bits), scale, zp)
    return w + (w_hat - w).detach()


def fake_quant_act(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor activation fake-quantization with the range [lo, hi]; identity STE."""
    scale, zp = scale_zero_point(lo, hi, bits)
    x_hat = dequantize(quantize(x.detach(), scale, zp, bits), scale, zp)
    return x + (x_hat - x).detach()
