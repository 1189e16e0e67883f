r"""Intervals for the findings: hierarchical bootstrap over seeds and epochs, and t-intervals.

Every claim reduces the tables to one *effect* whose sign says whether the data lean the
paper's way. Its uncertainty comes from what we have:

* **seeds** (independent training runs) and, inside a seed, **epochs / layers / probe
  vectors** (repeated measurements of the same run): a two-level (hierarchical) bootstrap
  resamples seeds with replacement, then the values inside each drawn seed, and recomputes
  the statistic (Davison & Hinkley 1997, §3.8). With a single seed only the inner level is
  resampled, which describes that run, not training in general; the claim text says so.
* **estimator noise**: a value that carries a standard error (a Hutchinson trace) is, in each
  bootstrap replicate, perturbed by ``stderr · N(0, 1)`` (a parametric bootstrap of the probe
  error). Probe seeds differ between checkpoints, so these errors are independent across
  epochs, which this assumes.
* **a difference of means over paired seeds** (accuracy of two runs trained with the same
  seed and teacher): the t-interval ``d̄ ± t_{0.975, n−1} · s_d / √n``.

The percentile interval (2.5 %, 97.5 %) of ``n_boot`` replicates is reported; the bootstrap
generator is seeded so that the same tables always give the same intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["Interval", "bootstrap", "paired_t_interval", "LEVEL", "N_BOOT"]

LEVEL = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a ``LEVEL`` interval ``[low, high]`` (NaN bounds: no interval)."""

    estimate: float
    low: float
    high: float
    method: str = "bootstrap"
    n: int = 0  # number of top-level units (seeds), for the text

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def map(self, fn: Callable[[float], float]) -> "Interval":
        """The interval of a monotone increasing function of the effect (e.g. ``exp``)."""
        lo = fn(self.low) if math.isfinite(self.low) else math.nan
        hi = fn(self.high) if math.isfinite(self.high) else math.nan
        return Interval(fn(self.estimate), lo, hi, self.method, self.n)

    def text(self, fmt: Callable[[float], str]) -> str:
        if not self.has_interval:
            return f"{fmt(self.estimate)} (no interval)"
        return f"{fmt(self.estimate)} [{fmt(self.low)}, {fmt(self.high)}]"


Groups = Mapping[object, Sequence[float]]


def _as_array(values: Sequence) -> np.ndarray:
    """Numbers (or equal-shaped arrays: one row per value) -> a float array; anything else -> an
    object array. Either is resampled by its first index."""
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return _objects(values)


def _objects(values: Sequence) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def bootstrap(groups: Groups | Sequence[Groups], statistic: Callable[..., np.ndarray] = None,
              noise: Groups | Sequence[Groups | None] | None = None, n_boot: int = N_BOOT, seed: int = 0,
              level: float = LEVEL) -> Interval:
    """Two-level bootstrap interval of the mean over seeds of ``statistic`` per seed.

    ``groups``: ``{seed: values}`` for one series, or a list of such dicts for several series
    measured on the same seeds (e.g. the ZQ and KD runs); the seeds are resampled jointly (a
    seed is drawn for all series at once), the values inside each series independently.
    ``statistic(*arrays)`` is vectorised: it gets one array of shape ``(R, n_i, ...)`` per
    series (R resamples of that seed's n_i values, each value a number or an equal-shaped
    array) and returns ``R`` numbers; default: the mean.
    ``noise``: standard errors aligned with ``groups``, added as ``stderr · N(0, 1)``.
    """
    series = list(groups) if isinstance(groups, (list, tuple)) else [groups]
    noises = list(noise) if isinstance(noise, (list, tuple)) else [noise] * len(series)
    statistic = statistic or (lambda x: np.mean(x, axis=-1))
    seeds = sorted(set.intersection(*[{k for k in g if len(g[k]) > 0} for g in series]), key=str)
    n_s = len(seeds)
    if not n_s:
        return Interval(math.nan, math.nan, math.nan, "bootstrap", 0)
    vals = [[_as_array(g[k]) for k in seeds] for g in series]
    errs = [[None if nz is None or k not in nz else np.nan_to_num(np.asarray(nz[k], dtype=float)) for k in seeds]
            for nz in noises]

    def seed_stats(i: int, rows: int, rng) -> np.ndarray:
        """``rows`` values of the statistic on seed i: resampled (rng) or as observed (None)."""
        arrays = []
        for v, e in zip(vals, errs):
            x, err = v[i], e[i]
            if rng is None:
                arrays.append(x[None, :])
                continue
            pick = rng.integers(0, len(x), (rows, len(x)))
            drawn = x[pick]
            if err is not None:
                drawn = drawn + err[pick] * rng.standard_normal(pick.shape)
            arrays.append(drawn)
        return np.asarray(statistic(*arrays), dtype=float).reshape(-1)

    estimate = float(np.mean([seed_stats(i, 1, None)[0] for i in range(n_s)]))
    rng = np.random.default_rng(seed)
    top = rng.integers(0, n_s, (n_boot, n_s)) if n_s > 1 else np.zeros((n_boot, 1), dtype=int)
    per = np.stack([seed_stats(i, n_boot * top.shape[1], rng).reshape(n_boot, top.shape[1]) for i in range(n_s)])
    reps = np.take_along_axis(per, top[None, :, :], axis=0)[0].mean(axis=1)  # slot j of replicate b: seed top[b, j]
    reps = reps[np.isfinite(reps)]
    if len(reps) < n_boot // 2:
        return Interval(estimate, math.nan, math.nan, "bootstrap", n_s)
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return Interval(estimate, float(lo), float(hi), "bootstrap", n_s)


def paired_t_interval(differences: Sequence[float], level: float = LEVEL) -> Interval:
    """``d̄ ± t_{(1+level)/2, n−1} · s_d/√n`` for paired differences (no interval when n < 2)."""
    d = np.asarray([x for x in differences if math.isfinite(x)], dtype=float)
    n = len(d)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, "t", 0)
    mean = float(d.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, "t", n)
    half = float(_st.t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, "t", n)
