"""The quantizer's exception and warning classes."""

from __future__ import annotations


class QuantizationError(AssertionError):
    """A quantized layer whose codes, dequantized weights or call sites break the quantizer's contract."""


class FrozenRoundingError(RuntimeError):
    """A forward pass inside :func:`~landscape.quant.frozen_rounding` that does not replay the
    recorded one (another input, shape, mode, or number of quantizer calls)."""


class QuantizationWarning(UserWarning):
    """Something :func:`~landscape.quant.quantize_model` could not quantize, or could not check."""
