"""Errors and warnings raised by the curvature engine.

Every bad input is reported by one :class:`CurvatureError` whose message names the
offending argument and its value, never by a deep traceback from inside torch.
"""

from __future__ import annotations

from landscape.errors import LandscapeError

__all__ = ["CurvatureError", "CurvatureWarning"]


class CurvatureError(LandscapeError, ValueError):
    """A bad argument or a bad loss given to the curvature engine.

    Also a ``ValueError`` (what it was before 0.3, and what curvlinops-style callers catch)."""


class CurvatureWarning(UserWarning):
    """Something the engine handled but the user should know about (e.g. unused parameters)."""
