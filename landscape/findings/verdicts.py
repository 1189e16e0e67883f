"""Verdict levels, and the one rule that turns an effect with its interval into a level.

* ``supported``: the effect is on the paper's side of its threshold and so is its whole
  interval;
* ``suggestive``: the point estimate is on the paper's side, the interval is not (or there is
  no interval: one seed where seeds are the unit, too few values to resample);
* ``not supported``: the point estimate is not on the paper's side (a tie, within ``TIE`` of the
  threshold, counts against: two losses that differ only by a constant must not be told apart
  by rounding);
* ``no data``: a run, a table or a value the rule needs is missing. A missing baseline never
  yields a better verdict than ``no data``.

A claim with several parts gets the weakest of its parts' levels.
"""

from __future__ import annotations

import math

from landscape.findings.stats import Interval

__all__ = ["SUPPORTED", "SUGGESTIVE", "NOT_SUPPORTED", "NO_DATA", "LEVELS", "judge", "weakest"]

SUPPORTED, SUGGESTIVE, NOT_SUPPORTED, NO_DATA = "supported", "suggestive", "not supported", "no data"
#: Effects closer than this to their threshold are ties.
TIE = 1e-9
#: From weakest to strongest.
LEVELS = (NO_DATA, NOT_SUPPORTED, SUGGESTIVE, SUPPORTED)


def judge(effect: Interval | None, threshold: float = 0.0, paper_side: str = "above") -> str:
    """The level of one effect: is it (and its interval) ``above``/``below`` ``threshold``?"""
    if paper_side not in ("above", "below"):
        raise ValueError(f"paper_side must be 'above' or 'below', got {paper_side!r}")
    if effect is None or not math.isfinite(effect.estimate):
        return NO_DATA
    sign = 1.0 if paper_side == "above" else -1.0
    tie = TIE * max(1.0, abs(threshold))
    if not sign * (effect.estimate - threshold) > tie:
        return NOT_SUPPORTED
    if effect.has_interval and sign * ((effect.low if sign > 0 else effect.high) - threshold) > tie:
        return SUPPORTED
    return SUGGESTIVE


def weakest(*levels: str) -> str:
    """The weakest level among the parts of a claim."""
    return min(levels, key=LEVELS.index)
