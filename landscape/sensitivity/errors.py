"""The one error of :mod:`landscape.sensitivity`: a bad table, model pair or budget."""

from __future__ import annotations

from landscape.errors import LandscapeError


class SensitivityError(LandscapeError, ValueError):
    """A sensitivity or allocation input the user can fix; the message names it and the fix."""
