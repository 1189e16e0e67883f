r"""The two claims of ``landscape compare``, judged in the verdict levels of
:mod:`landscape.findings.verdicts` with the intervals of :mod:`landscape.findings.stats`.

1. **The second-order term predicts which layers a quantizer hurts.** Per quantizer, the
   Spearman rank correlation ρ between ``second_order`` (½ δᵀ H_ll δ) and ``measured`` (the CE
   loss increase of quantizing that layer alone), over every (layer, bit width) of a seed,
   averaged over seeds; interval: two-level bootstrap (seeds, then the (layer, bits) points
   within a seed). Supported when ρ and its whole interval exceed :data:`RHO_MIN` = 0.5 (a
   ranking at least half-way from chance to perfect). The same ρ for ``taylor`` (first +
   second order) and ``trace_proxy`` (HAWQ-V2) is reported beside it (not judged).
2. **Curvature-guided bit allocation beats uniform and random allocations at equal size.**
   Per quantizer, the test accuracy (%) of the guided allocation minus that of uniform bits
   (a language model: the validation loss of uniform bits minus that of the guided allocation)
   (at the budgets that are bit widths) and minus the mean of the random allocations (at every
   budget); each difference averaged over budgets and seeds, interval by the same bootstrap
   (seeds, then budgets). Supported when both differences and their whole intervals are above
   0; the claim gets the weaker of the two levels.

Row ``all`` pools the quantizers (their points together within each seed), each distinct
weight quantizer once (:func:`distinct_weights`: PACT's weights are uniform's).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from landscape.errors import LandscapeError
from landscape.findings.stats import Interval, bootstrap
from landscape.findings.verdicts import NO_DATA, judge, weakest

__all__ = ["RHO_MIN", "spearman_rows", "allocation_rows", "claim_rows", "findings_table", "RULES"]

RHO_MIN = 0.5
PREDICTORS = ("second_order", "taylor", "trace_proxy", "delta_sq")  # delta_sq: ‖δ‖², no curvature at all
RULES = [
    "1 — ρ: Spearman rank correlation of the predicted and the measured CE loss increase of quantizing one layer "
    "alone, over the (layer, bit width) points of a seed (pooled over bit widths, so the ordering of the widths "
    "counts too: ‖δ‖² alone is reported beside it as the baseline without curvature), mean over seeds; supported when ρ and its 95 % interval "
    f"(bootstrap over seeds, then points) are above {RHO_MIN}, suggestive when only ρ is, not supported otherwise.",
    "2 — Δ: test accuracy (points) of the curvature-guided allocation minus uniform bits at the same budget "
    "(budgets that are bit widths), and minus the mean of random allocations at the same budget (each the exact "
    "optimum of the cost table with its layers randomly permuted: a random ranking of the layers that spends the "
    "budget as the guided one does); supported when "
    "both Δ and their 95 % intervals (bootstrap over seeds, then budgets) are above 0; the weaker level of the two.",
]


def _spearman(x: np.ndarray) -> np.ndarray:
    """Row-wise Spearman ρ of ``x[..., 0]`` and ``x[..., 1]`` (x: (R, n, 2)); NaN for a constant row."""
    a = rankdata(x[..., 0], axis=-1)
    b = rankdata(x[..., 1], axis=-1)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / den, np.nan)


def _groups(df: pd.DataFrame, columns: list[str]) -> dict:
    return {s: g[columns].to_numpy(float) for s, g in df.groupby("seed")}


def distinct_weights(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the quantizers whose weight quantizer no earlier one has. Per-layer damage and
    the allocations are weight-only, so a quantizer that differs only in its activations (PACT:
    uniform weights) repeats another's points exactly; pooling them would count those twice."""
    from landscape.compare.settings import quantizer_pair

    seen, keep = set(), []
    for q in dict.fromkeys(df["quantizer"]):
        try:
            weight = quantizer_pair(q)[0]
        except LandscapeError:
            weight = q
        if weight not in seen:
            seen.add(weight)
            keep.append(q)
    return df[df["quantizer"].isin(keep)]


def spearman_rows(sensitivity: pd.DataFrame, loss: str = "ce") -> list[dict]:
    """One row per (quantizer or ``all``, predictor): ρ with its interval, over seeds."""
    df = sensitivity[sensitivity["loss"] == loss]
    if "delta_sq_mean" in df:  # the curvature-free baseline the Hessian terms must beat
        df = df.assign(delta_sq=df["delta_sq_mean"] * df["n_params"])
    rows = []
    for q in [*dict.fromkeys(df["quantizer"]), "all"]:
        part = distinct_weights(df) if q == "all" else df[df["quantizer"] == q]
        for p in (p for p in PREDICTORS if p in part):
            iv = bootstrap(_groups(part, [p, "measured"]), _spearman) if len(part) else None
            rows.append({"quantizer": q, "loss": loss, "predictor": p,
                         "rho": iv.estimate if iv else math.nan, "low": iv.low if iv else math.nan,
                         "high": iv.high if iv else math.nan, "n_seeds": iv.n if iv else 0,
                         "n_points": len(part)})
    return rows


#: the allocations' score column -> (sign making "guided better" positive, unit in the findings)
METRICS = {"accuracy": (1.0, "accuracy points"),
           "val_loss": (-1.0, "validation loss reduction, nats per token")}


def allocation_metric(allocation: pd.DataFrame) -> str:
    """The score column of an allocation table: ``accuracy`` (images) or ``val_loss`` (language models)."""
    return next((m for m in METRICS if m in allocation.columns), "accuracy")


def _differences(allocation: pd.DataFrame, against: str, metric: str = "accuracy") -> pd.DataFrame:
    """Guided minus ``against`` (uniform, or the mean of random) per quantizer, seed and budget,
    signed so that positive means the guided allocation is better (higher accuracy, lower loss)."""
    keys = ["quantizer", "seed", "budget"]
    guided = allocation[allocation["strategy"] == "guided"].groupby(keys)[metric].mean()
    other = allocation[allocation["strategy"] == against].groupby(keys)[metric].mean()
    both = pd.concat({"guided": guided, "other": other}, axis=1).dropna()
    return (METRICS[metric][0] * (both["guided"] - both["other"])).rename("delta").reset_index()


def allocation_rows(allocation: pd.DataFrame) -> list[dict]:
    """One row per (quantizer or ``all``, baseline): Δ of the score (accuracy, or validation-loss
    reduction) with its interval."""
    rows = []
    metric = allocation_metric(allocation)
    for against in ("uniform", "random"):
        d = _differences(allocation, against, metric)
        for q in [*dict.fromkeys(allocation["quantizer"]), "all"]:
            part = distinct_weights(d) if q == "all" else d[d["quantizer"] == q]
            iv = bootstrap({s: g["delta"].to_numpy(float) for s, g in part.groupby("seed")}) if len(part) else None
            rows.append({"quantizer": q, "against": against, "metric": metric, "delta": iv.estimate if iv else math.nan,
                         "low": iv.low if iv else math.nan, "high": iv.high if iv else math.nan,
                         "n_seeds": iv.n if iv else 0, "n_budgets": part["budget"].nunique() if len(part) else 0})
    return rows


def _interval(row: dict, key: str) -> Interval | None:
    if row is None or not math.isfinite(row[key]):
        return None
    return Interval(row[key], row["low"], row["high"], "bootstrap", row["n_seeds"])


def _fmt(iv: Interval | None, signed: bool = False) -> str:
    return "—" if iv is None else iv.text(lambda x: f"{x:+.2f}" if signed else f"{x:.2f}")


def _unit(rows: dict) -> str:
    metric = next((r.get("metric") for r in rows.values() if r.get("metric")), "accuracy")
    return METRICS[metric][1]


def claim_rows(spearman: list[dict], allocation: list[dict]) -> list[dict]:
    """The findings rows: per quantizer (and ``all``), each claim's number and verdict."""
    out = []
    quantizers = list(dict.fromkeys([r["quantizer"] for r in spearman] + [r["quantizer"] for r in allocation]))
    for q in quantizers:
        sp = {r["predictor"]: r for r in spearman if r["quantizer"] == q}
        iv = _interval(sp.get("second_order"), "rho")
        others = "; ".join(f"{p}: {_fmt(_interval(sp.get(p), 'rho'))}" for p in PREDICTORS[1:] if p in sp)
        out.append({"id": 1, "quantizer": q, "claim": "the second-order term predicts which layers a quantizer hurts",
                    "number": f"ρ = {_fmt(iv)}" + (f" (beside it: {others})" if others else ""),
                    "verdict": judge(iv, RHO_MIN, "above") if iv else NO_DATA})
        al = {r["against"]: r for r in allocation if r["quantizer"] == q}
        ivs = {k: _interval(al.get(k), "delta") for k in ("uniform", "random")}
        levels = [judge(v, 0.0, "above") if v else NO_DATA for v in ivs.values()]
        out.append({"id": 2, "quantizer": q,
                    "claim": "curvature-guided bit allocation beats uniform and random allocations at equal size",
                    "number": f"Δ vs uniform = {_fmt(ivs['uniform'], True)}; Δ vs random = {_fmt(ivs['random'], True)} "
                              f"({_unit(al)})",
                    "verdict": weakest(*levels)})
    return sorted(out, key=lambda r: (r["id"], r["quantizer"] == "all"))


def findings_table(rows: list[dict]) -> str:
    """The claims as a Markdown table."""
    lines = ["| # | claim | quantizer | our number (95 % interval) | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['id']} | {r['claim']} | {r['quantizer']} | {r['number']} | **{r['verdict']}** |")
    return "\n".join(lines)
