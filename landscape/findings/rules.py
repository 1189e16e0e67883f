r"""The paper's claims, one function each, checked against the tidy tables.

Each claim function takes the tables (``{name: DataFrame or None}``) and the roles and returns
a :class:`Claim`. Its rule is the text written next to it (``RULE_n``), and that text is what
``figures/README.md`` prints, so that a reader can disagree with a threshold rather than with
the arithmetic. Levels and intervals: :mod:`landscape.findings.verdicts`,
:mod:`landscape.findings.stats`.

Claims 2–4 compare the curvature of two different losses. The paper compares raw sizes
(``verdict``); raw sizes move with the losses' scales (T², the KL reduction, the slice step
ĝ), so these claims also get a ``scale_free_verdict`` on quantities unchanged when a loss is
multiplied by a constant: tr(H)/L, λ_max/L, the slice rise relative to L(θ) on a step that
does not depend on the loss, and the shape of the spectrum against its own λ_max.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from landscape.findings.stats import Interval, bootstrap, paired_t_interval
from landscape.findings.verdicts import NO_DATA, judge, weakest
from landscape.tables import not_converged

__all__ = ["Claim", "CLAIMS", "check_all"]

Tables = Mapping[str, "pd.DataFrame | None"]


@dataclass
class Claim:
    """One claim of the paper against our data."""

    id: int
    claim: str
    number: str
    verdict: str
    rule: str
    scale_free_verdict: str | None = None
    scale_free_rule: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- helpers


def fmt(x: float, digits: int = 3) -> str:
    """A number for the findings table (3 significant digits, scientific when tiny or huge)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}"


def _ratio(x: float) -> str:
    return f"{fmt(x)}×"


def _rows(tables: Tables, name: str, metric: str, run: str, layer: str | None = "all") -> pd.DataFrame:
    df = tables.get(name)
    if df is None or run is None:
        return pd.DataFrame(columns=["run", "seed", "epoch", "loss", "layer", "metric", "value"])
    sel = (df["metric"] == metric) & (df["run"].astype(str) == str(run))
    if layer is not None:
        sel &= df["layer"].astype(str) == layer
    return df[sel]


def _by_seed(df: pd.DataFrame, column: str = "value") -> dict:
    """``{seed: values ordered by epoch}`` of one series (NaN seeds are one group)."""
    out = {}
    for seed, g in df.groupby(df["seed"].fillna(-1), sort=True):
        out[seed] = g.sort_values("epoch")[column].to_numpy(dtype=float)
    return out


def _median(x: np.ndarray) -> np.ndarray:
    return np.median(x, axis=-1)


def _median_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.median(x, axis=-1) - np.median(y, axis=-1)


def _median_and_gap(main: pd.DataFrame, ref: pd.DataFrame) -> tuple[Interval, Interval]:
    """The median over epochs of a run's values (mean over seeds), and its difference from a
    reference run's, each with its bootstrap interval (claims 1 and 5)."""
    return bootstrap(_by_seed(main), _median), bootstrap([_by_seed(main), _by_seed(ref)], _median_difference)


def _seed_note(interval: Interval) -> str:
    return "" if interval.n > 1 else " (1 seed: the interval is over epochs of that run only)"


def _convergence_note(claim: Claim, *frames: pd.DataFrame) -> None:
    n = sum(int(not_converged(f).sum()) for f in frames)
    if n:
        claim.notes.append(f"rests on {n} unconverged estimate(s) (see the `converged` column)")
        claim.number += f"; rests on {n} unconverged estimate(s)"


def _disagreement(claim: Claim) -> None:
    v, s = claim.verdict, claim.scale_free_verdict
    if s is None or NO_DATA in (v, s):
        return
    if (v == "not supported") != (s == "not supported"):
        claim.notes.append(
            f"the raw comparison ({v}) and the scale-free one ({s}) disagree: the raw difference is "
            "carried by the losses' scales (T², reduction, ĝ), not by the shape of their curvature")


def _paired(a: pd.DataFrame, b: pd.DataFrame, keys=("seed", "epoch")) -> pd.DataFrame:
    """Rows of two series matched on seed and epoch (columns ``*_a``, ``*_b``)."""
    keys = list(keys)
    a = a.assign(seed=a["seed"].fillna(-1))
    b = b.assign(seed=b["seed"].fillna(-1))
    return a.merge(b, on=keys, suffixes=("_a", "_b"))


def _loss_values(tables: Tables, name: str, run: str) -> pd.DataFrame:
    """``loss_value`` rows (L(θ) on the analysis batches), one per seed, epoch and loss."""
    return _rows(tables, name, "loss_value", run)


# ----------------------------------------------------------------------------- 1. cosine

TEXT_1 = "§2.1 Under ZQ the CE and KL gradients fight: cos(∇CE, ∇KL) near or below 0, lower than with real data."
RULE_1 = ("effect A = median over epochs of the whole-model cosine under ZQ (mean over seeds); effect B = A "
          "minus the same for KD. Supported if A's 95 % interval lies below 0.1 and B's below 0; "
          "suggestive if both estimates do; no data without the ZQ or the KD run")


def claim_1(tables: Tables, roles: Mapping) -> Claim:
    zq = _rows(tables, "cosine", "cosine", roles["zq"])
    kd = _rows(tables, "cosine", "cosine", roles["kd"])
    if zq.empty or kd.empty:
        missing = "ZQ" if zq.empty else "KD"
        return Claim(1, TEXT_1, f"no cosine rows for the {missing} run", NO_DATA, RULE_1)
    a, b = _median_and_gap(zq, kd)
    verdict = weakest(judge(a, 0.1, "below"), judge(b, 0.0, "below"))
    number = (f"median cos: ZQ [{roles['zq']}] {a.text(fmt)}; ZQ − KD [{roles['kd']}] {b.text(fmt)}"
              f"{_seed_note(a)}")
    return Claim(1, TEXT_1, number, verdict, RULE_1)


# ----------------------------------------------------------------------------- 2. trace

TEXT_2 = "§2.2 Under ZQ, KL has a smaller Hessian trace (flatter) than CE."
RULE_2 = ("effect = mean over epochs of log(tr H_CE / tr H_KL) under ZQ (mean over seeds), each trace "
          "perturbed by its Hutchinson standard error in the bootstrap; supported if the interval lies "
          "above 0 (KL smaller); suggestive if the estimate does")
RULE_2_SF = ("the same on the relative sharpness tr(H)/L, L the loss at θ on the same batches: "
             "log((tr H_CE/L_CE) / (tr H_KL/L_KL)); unchanged when a loss is multiplied by a constant")


def _trace_pairs(tables: Tables, run: str) -> pd.DataFrame:
    tr = _rows(tables, "trace", "trace", run)
    if "curvature" in tr:
        tr = tr[tr["curvature"].fillna("hessian") == "hessian"]
    ce, kl = tr[tr["loss"] == "ce"], tr[tr["loss"] == "kl"]
    pairs = _paired(ce, kl)
    return pairs[(pairs["value_a"] > 0) & (pairs["value_b"] > 0)]


def _log_ratio_effect(pairs: pd.DataFrame, scale_a=None, scale_b=None) -> Interval:
    """mean log(a/b) per seed with delta-method noise sqrt((se_a/a)² + (se_b/b)²)."""
    a, b = pairs["value_a"].to_numpy(float), pairs["value_b"].to_numpy(float)
    if scale_a is not None:
        a, b = a / scale_a, b / scale_b
    r = np.log(a / b)
    se = np.sqrt(np.nan_to_num(pairs["stderr_a"].to_numpy(float) / pairs["value_a"].to_numpy(float)) ** 2
                 + np.nan_to_num(pairs["stderr_b"].to_numpy(float) / pairs["value_b"].to_numpy(float)) ** 2)
    df = pairs.assign(r=r, se=se)
    return bootstrap(_by_seed(df, "r"), noise=_by_seed(df, "se"))


def claim_2(tables: Tables, roles: Mapping) -> Claim:
    pairs = _trace_pairs(tables, roles["zq"])
    if pairs.empty:
        return Claim(2, TEXT_2, f"no positive CE and KL traces for the ZQ run [{roles['zq']}]", NO_DATA, RULE_2,
                     NO_DATA, RULE_2_SF)
    raw = _log_ratio_effect(pairs)
    verdict = judge(raw, 0.0, "above")
    wins = int((pairs["value_b"] < pairs["value_a"]).sum())
    number = (f"ZQ [{roles['zq']}] tr(CE)/tr(KL) = {raw.map(math.exp).text(_ratio)} (geometric mean); KL smaller "
              f"at {wins} of {len(pairs)} checkpoints{_seed_note(raw)}")
    losses = _loss_values(tables, "trace", roles["zq"])
    sf_verdict, sf = NO_DATA, None
    if not losses.empty:
        lv = _paired(losses[losses["loss"] == "ce"], losses[losses["loss"] == "kl"])[["seed", "epoch", "value_a", "value_b"]]
        lv = lv.rename(columns={"value_a": "L_ce", "value_b": "L_kl"})
        both = pairs.merge(lv, on=["seed", "epoch"])
        both = both[(both["L_ce"] > 0) & (both["L_kl"] > 0)]
        if not both.empty:
            sf = _log_ratio_effect(both, both["L_ce"].to_numpy(float), both["L_kl"].to_numpy(float))
            sf_verdict = judge(sf, 0.0, "above")
            number += f"; relative (tr/L) CE/KL = {sf.map(math.exp).text(_ratio)}"
    claim = Claim(2, TEXT_2, number, verdict, RULE_2, sf_verdict, RULE_2_SF)
    _convergence_note(claim, _rows(tables, "trace", "trace", roles["zq"]))
    _disagreement(claim)
    return claim


# ----------------------------------------------------------------------------- 3. slices

TEXT_3 = "§2.3 Along the top eigenvector, KL's loss surface is flatter than CE's, more so late in training."
RULE_3 = ("rise = mean of L(θ ± k_max·e·ĝ) − L(θ) on the paper's (re-quantized) slice. Effect A = mean over "
          "sliced epochs of log(rise_CE / rise_KL) (> 0: KL flatter); effect B = that log ratio at the last "
          "sliced epoch minus at the first (> 0: more so late), over seeds. Supported if both intervals lie "
          "above 0; suggestive if both estimates do; no data with a single sliced epoch (B needs two)")
RULE_3_SF = ("the same two effects on the relative rise rise/L(θ) of a re-quantized slice with a unit step along e "
             "(k_max·e, the same step for both losses); no data if that slice is missing; "
             "λ_max/L is shown beside it")


def _rises(sl: pd.DataFrame) -> pd.DataFrame:
    """One row per (seed, epoch, loss): rise = mean of the two end points − the value at k = 0."""
    out = []
    for (seed, epoch, loss), g in sl.groupby([sl["seed"].fillna(-1), "epoch", "loss"]):
        g = g.groupby("k")["value"].mean().sort_index()
        if len(g) < 3:
            continue
        base = float(np.interp(0.0, g.index.to_numpy(float), g.to_numpy(float)))
        out.append({"seed": seed, "epoch": epoch, "loss": loss, "rise": float((g.iloc[0] + g.iloc[-1]) / 2 - base),
                    "base": base})
    return pd.DataFrame(out, columns=["seed", "epoch", "loss", "rise", "base"])


def _slice_rows(tables: Tables, run: str, kind: str) -> pd.DataFrame:
    sl = _rows(tables, "eigen", "slice_loss", run)
    if "slice" in sl:
        sl = sl[sl["slice"].fillna("requantized") == kind]
    elif kind != "requantized":
        return sl.iloc[0:0]
    return sl


def _slice_effects(r: pd.DataFrame, relative: bool) -> tuple[Interval | None, Interval | None, pd.DataFrame]:
    j = r[r["loss"] == "ce"].merge(r[r["loss"] == "kl"], on=["seed", "epoch"], suffixes=("_ce", "_kl"))
    if relative:
        j = j[(j["base_ce"] > 0) & (j["base_kl"] > 0)]
        j = j.assign(rise_ce=j["rise_ce"] / j["base_ce"], rise_kl=j["rise_kl"] / j["base_kl"])
    j = j[(j["rise_ce"] > 0) & (j["rise_kl"] > 0)]
    if j.empty:
        return None, None, j
    j = j.assign(r=np.log(j["rise_ce"] / j["rise_kl"]))
    a = bootstrap(_by_seed(j, "r"))
    late = {}
    for seed, g in j.groupby("seed"):
        g = g.sort_values("epoch")
        if len(g) > 1:
            late[seed] = g["r"].iloc[-1] - g["r"].iloc[0]
    b = paired_t_interval(list(late.values())) if late else None
    return a, b, j


def claim_3(tables: Tables, roles: Mapping) -> Claim:
    zq = roles["zq"]
    r = _rises(_slice_rows(tables, zq, "requantized"))
    a, b, j = _slice_effects(r, relative=False)
    if a is None:
        return Claim(3, TEXT_3, f"no CE and KL slices with a positive rise for the ZQ run [{zq}]", NO_DATA, RULE_3,
                     NO_DATA, RULE_3_SF)
    verdict = weakest(judge(a, 0.0, "above"), judge(b, 0.0, "above") if b is not None else NO_DATA)
    ratio = j.groupby("epoch")["r"].mean().map(lambda x: math.exp(-x))
    number = (f"ZQ [{zq}] rise KL/CE by epoch: {', '.join(f'{int(e)}: {fmt(v)}' for e, v in ratio.items())}; "
              f"rise CE/KL {a.map(math.exp).text(_ratio)}")
    if b is not None:
        number += f"; last − first log ratio {b.text(fmt)}"
    ru = _rises(_slice_rows(tables, zq, "requantized_unit"))
    sa, sb, _ = _slice_effects(ru, relative=True)
    sf_verdict = NO_DATA
    if sa is not None:
        sf_verdict = weakest(judge(sa, 0.0, "above"), judge(sb, 0.0, "above") if sb is not None else NO_DATA)
        number += f"; relative rise CE/KL (unit step) {sa.map(math.exp).text(_ratio)}"
    lam = _rows(tables, "eigen", "top_eigenvalue", zq)
    lv = _loss_values(tables, "eigen", zq)
    if not lam.empty and not lv.empty:
        m = lam.merge(lv, on=["seed", "epoch", "loss"], suffixes=("", "_L"))
        m = m[m["value_L"] > 0]
        rel = (m["value"] / m["value_L"]).groupby(m["loss"]).median()
        if {"ce", "kl"} <= set(rel.index):
            number += f"; median λ_max/L: CE {fmt(rel['ce'])}, KL {fmt(rel['kl'])}"
    claim = Claim(3, TEXT_3, number, verdict, RULE_3, sf_verdict, RULE_3_SF)
    _convergence_note(claim, lam)
    _disagreement(claim)
    return claim


# ----------------------------------------------------------------------------- 4. density

TEXT_4 = "§2.4 CE's eigenvalue density has a long tail of large eigenvalues; KL's is concentrated at small ones."
RULE_4 = ("from the SLQ Ritz values (nodes, weights) at the last analysed ZQ epoch, resampling SLQ probe vectors "
          "and seeds: effect A = log(top Ritz value CE / KL); effect B = spectral mass above 10 % of CE's top "
          "Ritz value, CE minus KL. Supported if both intervals lie above 0; suggestive if both estimates do")
RULE_4_SF = ("the shape against each loss's own scale: spectral mass above 10 % of the loss's OWN top Ritz value, "
             "CE minus KL (> 0: CE has more mass in its tail); the stable rank tr(H)/λ_max is shown beside it")


def _ritz(tables: Tables, run: str) -> pd.DataFrame:
    rz = _rows(tables, "density", "ritz", run)
    if "curvature" in rz:
        rz = rz[rz["curvature"].fillna("hessian") == "hessian"]
    if rz.empty:
        return rz
    last = rz.groupby(rz["seed"].fillna(-1))["epoch"].transform("max")
    rz = rz[rz["epoch"] == last]
    if "probe" not in rz:
        rz = rz.assign(probe=0)
    return rz.assign(seed=rz["seed"].fillna(-1), probe=rz["probe"].fillna(0))


def _spectra(rz: pd.DataFrame, loss: str) -> dict:
    """``{seed: array (probes, 2, L)}``: each SLQ probe's nodes (row 0) and weights (row 1), padded
    to a common length L with nodes −inf and weights 0 (so they count nowhere)."""
    probes: dict = {}
    for (seed, _probe), g in rz[rz["loss"] == loss].groupby(["seed", "probe"]):
        probes.setdefault(seed, []).append((g["x"].to_numpy(float), g["value"].to_numpy(float)))
    width = max((len(nd) for ps in probes.values() for nd, _ in ps), default=0)
    out = {}
    for seed, ps in probes.items():
        arr = np.zeros((len(ps), 2, width))
        arr[:, 0, :] = -np.inf
        for i, (nd, wt) in enumerate(ps):
            arr[i, 0, : len(nd)], arr[i, 1, : len(wt)] = nd, wt
        out[seed] = arr
    return out


def _top(s: np.ndarray) -> np.ndarray:
    """Largest Ritz value of each resample; ``s`` has shape (R, probes, 2, L)."""
    return s[:, :, 0, :].max(axis=(1, 2))


def _mass_above(s: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Spectral mass above ``threshold`` (one per resample) over the drawn probes."""
    nodes, weights = s[:, :, 0, :], s[:, :, 1, :]
    above = (nodes > threshold[:, None, None]) * weights
    return above.sum(axis=(1, 2)) / weights.sum(axis=(1, 2))


def _log_top_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ta, tb = _top(a), _top(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((ta > 0) & (tb > 0), np.log(ta / tb), np.nan)


def _mass_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    thr = 0.1 * _top(a)
    return _mass_above(a, thr) - _mass_above(b, thr)


def _own_mass_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _mass_above(a, 0.1 * _top(a)) - _mass_above(b, 0.1 * _top(b))


def claim_4(tables: Tables, roles: Mapping) -> Claim:
    zq = roles["zq"]
    rz = _ritz(tables, zq)
    if rz.empty or not {"ce", "kl"} <= set(rz["loss"]):
        return Claim(4, TEXT_4, f"no CE and KL Ritz values for the ZQ run [{zq}]", NO_DATA, RULE_4, NO_DATA, RULE_4_SF)
    ce, kl = _spectra(rz, "ce"), _spectra(rz, "kl")
    a = bootstrap([ce, kl], _log_top_ratio)
    b = bootstrap([ce, kl], _mass_difference)
    verdict = weakest(judge(a, 0.0, "above"), judge(b, 0.0, "above"))
    sf = bootstrap([ce, kl], _own_mass_difference)
    sf_verdict = judge(sf, 0.0, "above")
    epoch = int(rz["epoch"].max())
    number = (f"ZQ [{zq}] epoch {epoch}: top Ritz CE/KL {a.map(math.exp).text(_ratio)}; mass above 10 % of CE's top, "
              f"CE − KL {b.text(fmt)}; mass above 10 % of its own top, CE − KL {sf.text(fmt)}")
    tr = _rows(tables, "trace", "trace", zq)
    lam = _rows(tables, "eigen", "top_eigenvalue", zq)
    if not tr.empty and not lam.empty:
        m = tr.merge(lam, on=["seed", "epoch", "loss"], suffixes=("_tr", "_lam"))
        m = m[(m["epoch"] == m["epoch"].max()) & (m["value_lam"] > 0)]
        sr = (m["value_tr"] / m["value_lam"]).groupby(m["loss"]).mean()
        if {"ce", "kl"} <= set(sr.index):
            number += f"; stable rank tr/λ_max CE {fmt(sr['ce'])}, KL {fmt(sr['kl'])}"
    claim = Claim(4, TEXT_4, number, verdict, RULE_4, sf_verdict, RULE_4_SF)
    _disagreement(claim)
    return claim


# ----------------------------------------------------------------------------- 5. inter-epoch

TEXT_5 = ("§2.5 Under KL-only ZQ the mean KL gradient of an epoch keeps the previous epoch's direction "
          "(high inter-epoch cosine).")
RULE_5 = ("cosine of an epoch's mean training gradient with the previous epoch's (the paper's metric). Effect A = "
          "median over epochs under KL-only (mean over seeds); effect B = A minus the same for KD. Supported if A's "
          "interval lies above 0.5 and B's above 0; suggestive if both estimates do; no data without the KL-only "
          "or the KD run")


def claim_5(tables: Tables, roles: Mapping) -> Claim:
    klo = _rows(tables, "interepoch", "interepoch_cosine", roles["kl_only"])
    kd = _rows(tables, "interepoch", "interepoch_cosine", roles["kd"])
    if klo.empty or kd.empty:
        missing = "KL-only" if klo.empty else "KD"
        return Claim(5, TEXT_5, f"no epoch-mean inter-epoch cosine for the {missing} run", NO_DATA, RULE_5)
    a, b = _median_and_gap(klo, kd)
    verdict = weakest(judge(a, 0.5, "above"), judge(b, 0.0, "above"))
    number = f"median: KL-only [{roles['kl_only']}] {a.text(fmt)}; KL-only − KD [{roles['kd']}] {b.text(fmt)}"
    ait = _rows(tables, "interepoch", "interepoch_cosine", roles["ait"])
    if not ait.empty:
        number += f"; AIT [{roles['ait']}] {fmt(float(ait['value'].median()))}"
    fixed = _rows(tables, "interepoch", "interepoch_cosine_fixed_batches", roles["kl_only"])
    if not fixed.empty:
        number += f"; same batches, consecutive checkpoints (not the paper's metric) {fmt(float(fixed['value'].median()))}"
    return Claim(5, TEXT_5, number + _seed_note(a), verdict, RULE_5)


# ----------------------------------------------------------------------------- 6. crossings

TEXT_6 = ("§2.6 Under KL-only ZQ, tiny fractions of weights cross a rounding threshold (order 1e-5 per step), "
          "in a few layers.")
RULE_6 = ("from the trainer's per-step log. Effect A = mean over layers and epochs of the per-step fraction "
          "under KL-only (mean over seeds; log10, resampling epochs and seeds); 'order 1e-5' = within a decade, "
          "[1e-6, 1e-4]. Part B: at most half of the layers move (a layer moves if its mean fraction > 1e-5). "
          "Supported if A's interval lies inside [1e-6, 1e-4] and B holds; suggestive if A's estimate does and "
          "B holds; a mean of 0 is not 'order 1e-5'")


def claim_6(tables: Tables, roles: Mapping) -> Claim:
    cz = _rows(tables, "crossings", "step_crossing_fraction", roles["kl_only"], layer=None)
    cz = cz[cz["layer"].astype(str) != "all"]
    if cz.empty:
        return Claim(6, TEXT_6, f"no per-step crossing rows for the KL-only run [{roles['kl_only']}]", NO_DATA, RULE_6)
    per_epoch = cz.groupby([cz["seed"].fillna(-1), "epoch"])["value"].mean().reset_index()
    a = bootstrap(_by_seed(per_epoch))
    per_layer = cz.groupby("layer")["value"].mean()
    moving = int((per_layer > 1e-5).sum())
    b_ok = moving <= len(per_layer) / 2
    if not a.estimate > 0:
        level = "not supported"
    else:
        log_a = a.map(lambda x: math.log10(x) if x > 0 else -math.inf)
        lo_ok, hi_ok = judge(log_a, -6.0, "above"), judge(log_a, -4.0, "below")
        level = weakest(lo_ok, hi_ok)
    verdict = weakest(level, "supported" if b_ok else "not supported")
    number = (f"KL-only [{roles['kl_only']}]: mean per-step fraction {a.text(fmt)}, {moving} of "
              f"{len(per_layer)} layers move")
    ca = _rows(tables, "crossings", "step_crossing_fraction", roles["ait"], layer=None)
    ca = ca[ca["layer"].astype(str) != "all"]
    if not ca.empty:
        number += f"; AIT [{roles['ait']}] {fmt(float(ca.groupby('layer')['value'].mean().mean()))}"
    return Claim(6, TEXT_6, number + _seed_note(a), verdict, RULE_6)


# ----------------------------------------------------------------------------- 7. accuracy

TEXT_7 = ("§1 AIT beats GDFQ and KL-only at low bit-width (paper, CIFAR-10 ResNet-20 W4A4, best test accuracy: "
          "GDFQ 90.25 %, AIT 91.23 %).")
RULE_7 = ("best test accuracy over epochs per run and seed (the paper's statistic). Effects: AIT − GDFQ and "
          "AIT − KL-only, paired by seed, mean with a 95 % t-interval over seeds. Supported if both intervals "
          "lie above 0; suggestive if both means do (always so with one seed); no data without the AIT, GDFQ or "
          "KL-only run")


def _accuracy(tables: Tables, metric: str) -> pd.DataFrame:
    df = tables.get("training")
    if df is None:
        return pd.DataFrame(columns=["run", "seed", "value"])
    acc = df[df["metric"] == metric]
    if acc.empty and metric == "best_acc":  # logs written before best_acc existed
        acc = df[df["metric"] == "test_acc"]
        return acc.groupby(["run", acc["seed"].fillna(-1)])["value"].max().reset_index()
    last = acc.sort_values("epoch").groupby(["run", acc["seed"].fillna(-1)])["value"].last()
    return last.reset_index()


def claim_7(tables: Tables, roles: Mapping) -> Claim:
    best = _accuracy(tables, "best_acc")
    final = _accuracy(tables, "test_acc")
    runs = {name: roles[key] for name, key in (("AIT", "ait"), ("GDFQ", "zq"), ("KL-only", "kl_only"))}
    have = {name: best[best["run"] == r].set_index("seed")["value"] for name, r in runs.items()}
    missing = [n for n, s in have.items() if s.empty]
    if missing:
        return Claim(7, TEXT_7, f"no accuracy for {', '.join(missing)}", NO_DATA, RULE_7)
    parts, levels = [], []
    for other in ("GDFQ", "KL-only"):
        seeds = have["AIT"].index.intersection(have[other].index)
        diff = paired_t_interval((have["AIT"][seeds] - have[other][seeds]).tolist())
        levels.append(judge(diff, 0.0, "above"))
        parts.append(f"AIT − {other} {diff.text(lambda x: f'{x:+.2f}')} pts")

    def summary(name):
        s = have[name]
        f = final[final["run"] == runs[name]]["value"]
        sd = f" ± {s.std(ddof=1):.2f}" if len(s) > 1 else ""
        return f"{name} [{runs[name]}] best {s.mean():.2f}{sd}, final {f.mean():.2f}"

    n = len(have["AIT"])
    number = "; ".join([summary(k) for k in ("AIT", "GDFQ", "KL-only")] + parts) + f" (n = {n} seed{'s' if n != 1 else ''})"
    return Claim(7, TEXT_7, number, weakest(*levels), RULE_7)


CLAIMS: tuple[Callable[[Tables, Mapping], Claim], ...] = (claim_1, claim_2, claim_3, claim_4, claim_5, claim_6, claim_7)


def check_all(tables: Tables, roles: Mapping) -> list[Claim]:
    """Every claim, in order."""
    return [fn(tables, roles) for fn in CLAIMS]
