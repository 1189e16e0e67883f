"""The trainer's own errors, on the floor below both the trainer and its data-parallel plumbing
(:mod:`landscape.zsq.parallel` raises one when the ranks drift apart; the trainer when a loss
diverges), so that neither imports the other for it."""

from __future__ import annotations

from landscape.errors import LandscapeError

__all__ = ["TrainingError", "OptimizerSettingError"]


class TrainingError(LandscapeError, RuntimeError):
    """Training cannot continue (a non-finite loss); the message names the step and the last
    good checkpoint."""


class OptimizerSettingError(LandscapeError, ValueError):
    """An optimizer built with a setting out of its range (a negative learning rate, GI's rho or
    kappa_max out of bounds), from a recipe or a Python call."""
