"""Fake quantization of a teacher into a student (see :mod:`.functional` for the arithmetic).

    student = quantize_model(teacher, w_bits=4, a_bits=4)   # deep copy, eval mode
    calibrate(student, batches)                               # PTQ: activation ranges
    quantized_layers(student) -> [(name, QuantConv2d | QuantLinear)]
    integer_codes(student)    -> {name: LongTensor}
    check_dequantization(student) -> per-layer report; raises QuantizationError on failure
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import nn

from landscape.config import check_bits
from landscape.quant import functional
from landscape.quant.functional import (dequantize, fake_quant_weight, qrange, quantize,
                                        weight_codes, weight_qparams)
from landscape.quant.modules import ActQuant, QuantConv2d, QuantLinear, _to_quant

__all__ = ["quantize_model", "quantized_layers", "integer_codes", "act_quantizers",
           "calibrating", "calibrate", "check_dequantization", "QuantizationError",
           "QuantConv2d", "QuantLinear", "ActQuant", "functional", "weight_codes",
           "weight_qparams", "fake_quant_weight", "quantize", "dequantize", "qrange"]


class QuantizationError(AssertionError):
    """A quantized layer whose codes or dequantized weights break the quantizer's contract."""


def quantize_model(model: nn.Module, w_bits: int, a_bits: int, act_momentum: float = 0.9) -> nn.Module:
    """A fake-quantized deep copy of ``model``, in eval mode.

    Every nn.Conv2d and nn.Linear (first and last included) gets ``w_bits`` per-channel
    weights; every nn.ReLU is followed by a per-tensor ``a_bits`` ActQuant (uncalibrated:
    run :func:`calibrate` or the trainer's warm-up before using it).
    """
    check_bits(w_bits, "w_bits")
    check_bits(a_bits, "a_bits")
    student = copy.deepcopy(model)
    for module in list(student.modules()):
        if type(module) is nn.Conv2d:
            _to_quant(module, QuantConv2d, w_bits)
        elif type(module) is nn.Linear:
            _to_quant(module, QuantLinear, w_bits)
        for child_name, child in list(module.named_children()):
            if type(child) is nn.ReLU:
                setattr(module, child_name, nn.Sequential(OrderedDict(
                    relu=child, quant=ActQuant(a_bits, act_momentum))))
    return student.eval()


def quantized_layers(student: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in student.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def act_quantizers(student: nn.Module) -> list[tuple[str, ActQuant]]:
    return [(n, m) for n, m in student.named_modules() if isinstance(m, ActQuant)]


@torch.no_grad()
def integer_codes(student: nn.Module) -> dict[str, torch.Tensor]:
    """The integer weight codes q of every quantized layer (LongTensor, weight-shaped)."""
    return {n: weight_codes(m.weight, m.w_bits) for n, m in quantized_layers(student)}


@contextmanager
def calibrating(student: nn.Module, on: bool = True):
    """Within the block, activation quantizers update their EMA range (or stay frozen)."""
    quantizers = [m for _, m in act_quantizers(student)]
    before = [q.calibrating for q in quantizers]
    for q in quantizers:
        q.calibrating = on
    try:
        yield student
    finally:
        for q, b in zip(quantizers, before):
            q.calibrating = b


@torch.no_grad()
def calibrate(student: nn.Module, batches) -> nn.Module:
    """Post-training quantization: set activation ranges from ``batches`` (x or (x, y)), no training."""
    device = next(student.parameters()).device
    student.eval()
    with calibrating(student):
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            student(x.to(device))
    return student


@torch.no_grad()
def check_dequantization(student: nn.Module, atol: float = 1e-6) -> list[dict]:
    """Verify every quantized layer: codes within [-2^(b-1), 2^(b-1)-1], the forward weight
    equals scale*(q - zero_point), and |w - dequant(w)| <= scale/2.

    Returns one row per layer (layer, bits, n, code_min, code_max, max_error_over_half_scale)
    and raises QuantizationError naming the first layer that fails.
    """
    rows = []
    for name, m in quantized_layers(student):
        w, bits = m.weight.detach(), m.w_bits
        scale, zp = weight_qparams(w, bits)
        q = quantize(w, scale, zp, bits)
        lo, hi = qrange(bits)
        if q.min() < lo or q.max() > hi or not torch.equal(q, q.round()):
            raise QuantizationError(f"{name}: codes outside [{lo}, {hi}] or not integers")
        w_hat = dequantize(q, scale, zp)
        used = m.quantized_weight().detach()
        if not torch.allclose(used, w_hat, atol=atol, rtol=0):
            raise QuantizationError(f"{name}: forward weight differs from scale*(q - zero_point) "
                                    f"by {(used - w_hat).abs().max():.3g}")
        ratio = ((w - w_hat).abs() / scale).max().item()
        # float rounding of w/s + z grows with the code range (16 bits in float32: ~1e-2)
        slack = 4 * torch.finfo(w.dtype).eps * (w.abs() / scale + zp.abs()).max().item()
        if ratio > 0.5 + max(slack, 1e-6):
            raise QuantizationError(f"{name}: dequantization error {ratio:.4f} x scale > scale/2")
        rows.append({"layer": name, "bits": bits, "n": w.numel(), "code_min": int(q.min()),
                     "code_max": int(q.max()), "max_error_over_scale": ratio})
    return rows
