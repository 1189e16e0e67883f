"""The quantizer's exception and warning classes."""

from __future__ import annotations

from landscape.errors import LandscapeError


class QuantizationError(AssertionError):
    """A quantized layer whose codes, dequantized weights or call sites break the quantizer's contract."""


class FrozenRoundingError(RuntimeError):
    """A forward pass inside :func:`~landscape.quant.frozen_rounding` that does not replay the
    recorded one (another input, shape, mode, or number of quantizer calls)."""


class QuantizationWarning(UserWarning):
    """Something :func:`~landscape.quant.quantize_model` could not quantize, or could not check."""


class QuantizerError(LandscapeError, ValueError):
    """A bad argument to :func:`~landscape.quant.quantize_model` or to a quantizer from a Python
    call (bits out of range, an unknown quantizer name, a user class that cannot be imported or
    does not return a module, an include/exclude pattern that matches no layer); one line naming
    the argument and the fix. Recipes report the same mistakes as a ``RecipeError``."""
