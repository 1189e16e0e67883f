r"""Quantization arithmetic as pure functions (no modules, no state).

Asymmetric uniform quantization to b-bit signed codes, q ∈ [−2^(b−1), 2^(b−1) − 1]. Written
with the step s (the width of one code) and a zero point z:

    step       s = max(max − min, 1e-8) / (2^b − 1)
    code       q = clamp(round(x / s + z), −2^(b−1), 2^(b−1) − 1)     (round half to even)
    dequant    x̂ = s · (q − z)

Two zero points (``zero_point=``):

* ``"integral"`` (the default for weights; the official GDFQ/AIT code, inherited from ZeroQ's
  ``asymmetric_linear_quantization_params(..., integral_zero_point=True)``):
  z = −round(min / s) − 2^(b−1), an integer. The official code writes the same grid with the
  inverse step S = 1/s = (2^b − 1)/(max − min) and its zero point zp = −z:
  zp = round(S·min) + 2^(b−1), code = clamp(round(S·w − zp)), dequant = (code + zp)/S.
  Every grid point s·(q − z) is an integer multiple of s, so **0 is exactly representable**;
  the grid [s·round(min/s), s·round(min/s) + (2^b − 1)·s] is [min, max] shifted by
  −s·δ, δ = min/s − round(min/s) ∈ [−½, ½]. So at one end up to |δ|·s ≤ s/2 of the channel's
  range lies outside the grid and is clipped to the end code: the largest weights when δ > 0,
  the smallest when δ < 0. The clipped weights are within s·|δ| ≤ s/2 of their end point, and
  every other weight within s/2 of its nearest grid point, so **|x − x̂| ≤ s/2 for every x in
  [min, max]**, the same bound as the float grid (equality only at a rounding tie).
* ``"float"`` (for your own quantizers): z = −min/s − 2^(b−1), not rounded. The grid is
  exactly [min, max] (min and max are representable, 0 in general is not); no clipping, and
  |x − x̂| ≤ s/2 inside [min, max].

The guard for max == min is the official one: the range is clamped to 1e-8, so a constant
channel gets s = 1e-8/(2^b − 1); with the integral zero point its weights all take the
lowest code −2^(b−1) and dequantize to s·round(min/s), within s/2 of min (exactly 0 for an
all-zero channel); with the float one they take the lowest code and dequantize to min.

Both are computed here with a division by s where the official code multiplies by
S = 1/s; the two differ by at most an ulp before rounding, so a code can differ only when
x/s + z falls within an ulp of a rounding tie (tested equal on random weights).

Weights use one (min, max) per output channel, or with ``group_size = g`` one per group of g
consecutive weights along the input dimension of each output channel (GPTQ/AWQ-style per-group
scales; :mod:`.groups`); activations one per tensor, from the
quantizer's EMA range, with the float zero point (the official code uses the integral one
for activations too; after a ReLU the range starts at min = 0, where the two coincide).

The straight-through estimator is ``x + (x̂ − x).detach()``: the forward value is x̂, the
derivative w.r.t. x is exactly the identity and every higher derivative of the loss w.r.t.
x equals that of the loss w.r.t. x̂ (the detached term is a constant offset c = x̂ − x), so
double-backward Hessian-vector products go through it unchanged. :func:`weight_offset` and
:func:`act_offset` return that offset c; :func:`landscape.quant.frozen_rounding` holds it fixed.
"""

from __future__ import annotations

import torch

from landscape.quant.groups import group_min_max

ZERO_POINTS = ("integral", "float")


def check_zero_point(zero_point: str) -> str:
    """Return ``zero_point`` if it is ``"integral"`` or ``"float"``; else one clear ValueError."""
    if zero_point not in ZERO_POINTS:
        raise ValueError(f"zero_point must be 'integral' (the official GDFQ/AIT grid, anchored at 0) "
                         f"or 'float' (grid anchored at min), got {zero_point!r}")
    return zero_point


def qrange(bits: int) -> tuple[int, int]:
    """The signed code range (−2^(b−1), 2^(b−1) − 1)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def scale_zero_point(lo: torch.Tensor, hi: torch.Tensor, bits: int,
                     zero_point: str = "float") -> tuple[torch.Tensor, torch.Tensor]:
    """Step s and zero point z of the grid for a range [lo, hi] (tensors broadcastable to x).

    ``zero_point="float"``: z = −lo/s − 2^(b−1); ``"integral"``: z = −round(lo/s) − 2^(b−1).
    """
    check_zero_point(zero_point)
    scale = (hi - lo).clamp_min(1e-8) / (2 ** bits - 1)
    shift = lo / scale
    if zero_point == "integral":
        shift = torch.round(shift)
    return scale, -shift - 2 ** (bits - 1)


def quantize(x: torch.Tensor, scale, zero_point, bits: int) -> torch.Tensor:
    """Integer codes (as a float tensor) of x: clamp(round(x/s + z), −2^(b−1), 2^(b−1) − 1)."""
    lo, hi = qrange(bits)
    return torch.clamp(torch.round(x / scale + zero_point), lo, hi)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """x̂ = s·(q − z)."""
    return scale * (q - zero_point)


def weight_range(w: torch.Tensor, group_size: int | None = None):
    """(min, max) of a weight, shaped to broadcast against it: per output channel, or per group
    of ``group_size`` inputs of each output channel (then of w's full shape; :mod:`.groups`)."""
    if group_size is not None:
        return group_min_max(w.detach(), group_size)
    flat = w.detach().reshape(w.shape[0], -1)
    shape = (w.shape[0],) + (1,) * (w.dim() - 1)
    return flat.min(dim=1).values.reshape(shape), flat.max(dim=1).values.reshape(shape)


def weight_qparams(w: torch.Tensor, bits: int, zero_point: str = "integral",
                   group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel (or per-group) (step s, zero point z) of a weight, broadcastable to it."""
    lo, hi = weight_range(w, group_size)
    return scale_zero_point(lo, hi, bits, zero_point)


def weight_codes(w: torch.Tensor, bits: int, zero_point: str = "integral",
                 group_size: int | None = None) -> torch.Tensor:
    """Integer codes of a weight tensor under its own per-channel (per-group) min/max (LongTensor)."""
    scale, zp = weight_qparams(w, bits, zero_point, group_size)
    return quantize(w.detach(), scale, zp, bits).long()


def weight_offset(w: torch.Tensor, bits: int, zero_point: str = "integral",
                  group_size: int | None = None) -> torch.Tensor:
    """The rounding offset c = ŵ − w of a weight (detached): the STE's constant term."""
    w = w.detach()
    scale, zp = weight_qparams(w, bits, zero_point, group_size)
    return dequantize(quantize(w, scale, zp, bits), scale, zp) - w


def fake_quant_weight(w: torch.Tensor, bits: int, zero_point: str = "integral",
                      group_size: int | None = None) -> torch.Tensor:
    """Dequantized weight in the forward pass, identity STE in the backward pass: w + (ŵ − w)."""
    return w + weight_offset(w, bits, zero_point, group_size)


def act_offset(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """The rounding offset c = x̂ − x of an activation (detached), range [lo, hi], float zero point."""
    x = x.detach()
    scale, zp = scale_zero_point(lo, hi, bits)
    return dequantize(quantize(x, scale, zp, bits), scale, zp) - x


def fake_quant_act(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor activation fake-quantization with the range [lo, hi]; identity STE."""
    return x + act_offset(x, lo, hi, bits)
