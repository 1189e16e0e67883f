"""Until the quantizer's integral weight zero point lands (issue 7 §3), call it when it is
there and say plainly when it is not.

    student = quantize_model(teacher, w_bits, a_bits, act_momentum, weight_zero_point)
    effective_zero_point("integral")  # what the student really uses: recorded in checkpoints
    weight_codes(w, bits, zero_point)

Delete this module (and call :mod:`landscape.quant` directly) once ``landscape.quant``'s
``quantize_model`` takes ``weight_zero_point`` and ``weight_codes`` takes ``zero_point``.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn

from landscape import quant
from landscape.quant import functional


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


HAS_ZERO_POINT = _accepts(quant.quantize_model, "weight_zero_point")
_CODES_ZERO_POINT = _accepts(functional.weight_codes, "zero_point")
_warned = False


def effective_zero_point(requested: str) -> str:
    """The weight zero point a student built now really has (``"float"`` before issue 7 §3)."""
    global _warned
    if HAS_ZERO_POINT or requested == "float":
        return requested
    if not _warned:
        warnings.warn(f"weight_zero_point = {requested!r} asked for, but this landscape.quant has "
                      "only the float zero point; the student uses (and its checkpoints record) "
                      "'float'", stacklevel=3)
        _warned = True
    return "float"


def quantize_model(model: nn.Module, w_bits: int, a_bits: int, act_momentum: float,
                   weight_zero_point: str) -> nn.Module:
    zp = effective_zero_point(weight_zero_point)
    if HAS_ZERO_POINT:
        return quant.quantize_model(model, w_bits, a_bits, act_momentum, weight_zero_point=zp)
    return quant.quantize_model(model, w_bits, a_bits, act_momentum)


def weight_codes(w: torch.Tensor, bits: int, zero_point: str | None = None) -> torch.Tensor:
    if zero_point is None or not _CODES_ZERO_POINT:
        return functional.weight_codes(w, bits)
    return functional.weight_codes(w, bits, zero_point=zero_point)
