"""How firmly each verdict stands: leave one seed out, and resample the seeds.

A verdict that moves from "supported" to "suggestive" when the last bits of a run change is not
a finding a reader can act on. For each claim this module re-judges it

* with each seed left out in turn (``n`` judgements for ``n`` seeds), and
* on every bootstrap resample of the seeds: ``n`` seeds drawn with replacement, a seed drawn
  twice counted as two seeds with the same data. With few seeds every resample is enumerated
  (the ``C(2n-1, n)`` multisets, each weighted by its multinomial probability ``n!/(Π m_i!) / n^n``),
  so the share is exact and needs no random numbers; beyond :data:`MAX_MULTISETS` a fixed-seed
  sample of resamples is used instead.

It reports, per claim and verdict column, how many leave-one-out judgements and which share of
the resamples give the reported level; a verdict that a single left-out seed changes **rests on
a boundary**. Nothing here recomputes an analysis: it re-reads the same tables through
:func:`landscape.findings.rules.check_all`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["Firmness", "seeds_of", "with_seeds", "firmness", "MAX_MULTISETS"]

#: beyond this many distinct resamples (n = 6 seeds: 462) a sample of this size is drawn instead
MAX_MULTISETS = 200
_RELABEL = 1_000_000  # a seed drawn for the k-th time becomes seed + k * _RELABEL


@dataclass(frozen=True)
class Firmness:
    """How one verdict holds up: ``loo_same`` of ``n_seeds`` leave-one-out judgements and a share
    ``resample_share`` of the seed resamples give the reported level."""

    level: str
    loo_same: int
    n_seeds: int
    resample_share: float

    @property
    def on_boundary(self) -> bool:
        """A single left-out seed changes the verdict."""
        return self.loo_same < self.n_seeds

    def text(self) -> str:
        head = "rests on a boundary: " if self.on_boundary else ""
        return (f"{head}{self.loo_same} of {self.n_seeds} leave-one-out; "
                f"{100 * self.resample_share:.0f} % of resamples")


def seeds_of(tables: Mapping[str, pd.DataFrame | None]) -> list[int]:
    """The run seeds present in any table (rows without a seed aside)."""
    seeds: set[int] = set()
    for df in tables.values():
        if df is not None and "seed" in df:
            seeds |= {int(s) for s in df["seed"].dropna().unique()}
    return sorted(seeds)


def with_seeds(tables: Mapping[str, pd.DataFrame | None], seeds: Sequence[int]) -> dict:
    """The tables as if the runs had been the seeds ``seeds`` (with repetition): each table's rows
    of seed ``s``, once per time ``s`` is drawn, the k-th repeat relabelled ``s + k·10⁶``; rows
    without a seed are kept as they are."""
    out = {}
    for name, df in tables.items():
        if df is None or "seed" not in df:
            out[name] = df
            continue
        parts = [df[df["seed"].isna()]]
        seen: Counter = Counter()
        for s in seeds:
            part = df[df["seed"] == s]
            if seen[s]:
                part = part.assign(seed=part["seed"] + seen[s] * _RELABEL)
            seen[s] += 1
            parts.append(part)
        out[name] = pd.concat(parts, ignore_index=True)
    return out


def _resamples(seeds: list[int]) -> list[tuple[tuple[int, ...], float]]:
    """Every multiset of ``len(seeds)`` draws with its bootstrap probability (or a fixed sample)."""
    n = len(seeds)
    if math.comb(2 * n - 1, n) <= MAX_MULTISETS:
        out = []
        for ms in itertools.combinations_with_replacement(seeds, n):
            ways = math.factorial(n)
            for m in Counter(ms).values():
                ways //= math.factorial(m)
            out.append((ms, ways / n ** n))
        return out
    rng = np.random.default_rng(0)
    draws = Counter(tuple(sorted(rng.choice(seeds, size=n))) for _ in range(MAX_MULTISETS))
    return [(tuple(int(s) for s in ms), c / MAX_MULTISETS) for ms, c in draws.items()]


def firmness(tables: Mapping[str, pd.DataFrame | None], roles: Mapping,
             reported: Sequence[dict]) -> dict[int, dict[str, Firmness]]:
    """``{claim id: {"verdict": Firmness, "scale_free_verdict": Firmness}}`` for the claims
    ``reported`` (rows of :func:`landscape.findings.claims`); empty with fewer than two seeds."""
    from landscape.findings.rules import check_all

    seeds = seeds_of(tables)
    if len(seeds) < 2:
        return {}

    def judge(subset: Sequence[int]) -> dict[int, dict[str, str | None]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {c.id: {"verdict": c.verdict, "scale_free_verdict": c.scale_free_verdict}
                    for c in check_all(with_seeds(tables, subset), roles)}

    loo = [judge([s for s in seeds if s != out]) for out in seeds]
    boot = [(judge(ms), p) for ms, p in _resamples(seeds)]
    result: dict[int, dict[str, Firmness]] = {}
    for row in reported:
        cid = row["id"]
        result[cid] = {}
        for column in ("verdict", "scale_free_verdict"):
            level = row.get(column)
            if level is None:
                continue
            same = sum(j.get(cid, {}).get(column) == level for j in loo)
            share = sum(p for j, p in boot if j.get(cid, {}).get(column) == level)
            result[cid][column] = Firmness(level, same, len(seeds), share)
    return result
