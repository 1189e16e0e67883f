"""The quantizer's exception and warning classes."""

from __future__ import annotations

from landscape.errors import LandscapeError


class QuantizationError(AssertionError):
    """The built-in quantizer broke its own contract: :func:`~landscape.quant.check_dequantization`
    found codes off the grid or a forward weight other than s·(q − z). That is a bug in landscape,
    not a bad input, so this is deliberately *not* a :class:`LandscapeError`: the command line
    shows its traceback and asks for a report."""


class CallSiteError(LandscapeError, RuntimeError):
    """An activation quantizer called another number of times in one forward pass than the call
    sites torch.fx found when :func:`~landscape.quant.quantize_model` ran: the model's control flow
    changed since; quantize it again."""


class FrozenRoundingError(LandscapeError, RuntimeError):
    """A forward pass inside :func:`~landscape.quant.frozen_rounding` that does not replay the
    recorded one (another input, shape, mode, or number of quantizer calls)."""


class QuantizationWarning(UserWarning):
    """Something :func:`~landscape.quant.quantize_model` could not quantize, or could not check."""


class QuantizerError(LandscapeError, ValueError):
    """A bad argument to :func:`~landscape.quant.quantize_model` or to a quantizer from a Python
    call (bits out of range, an unknown quantizer name, a user class that cannot be imported or
    does not return a module, an include/exclude pattern that matches no layer); one line naming
    the argument and the fix. Recipes report the same mistakes as a ``RecipeError``."""
