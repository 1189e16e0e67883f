"""figures/README.md: each figure with a two-line caption, and the paper's claims checked.

For each claim of METHOD.md §2 (and the headline accuracy claim of §1), :func:`claims`
computes the number that decides it from the tidy tables and says whether our data
*supports* it, *partly* supports it, does *not support* it, or has *no data* for it. The
rule behind each verdict is printed next to it, so a reader can disagree with the threshold
rather than with the arithmetic. Nothing here recomputes an analysis.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from landscape.figures import read_table, resolve_roles

SUPPORTED, PARTLY, NOT_SUPPORTED, NO_DATA = "supported", "partly", "not supported", "no data"

CAPTIONS = {
    "fig1_cosine": ("Fig. 1 — CE/KL gradient cosine over epochs, KD (real data) vs ZQ (synthetic).",
                    "Cosine > 0: the two losses pull the same way; ≤ 0: they fight. Band: middle half of the layers."),
    "fig2_trace": ("Fig. 2 — Hessian trace (Hutchinson, ±2 s.e.) of CE (red, solid) and KL (blue, dashed), KD vs ZQ.",
                   "A smaller trace is a flatter minimum, expected to generalize better."),
    "fig3_slices": ("Fig. 3 — Loss along each loss's top Hessian eigenvector, L(θ + k·e·ĝ) − L(θ), k ∈ [−0.5, 0.5].",
                    "CE red (solid), KL blue (dashed), a few epochs; ĝ = |⟨∇L, e⟩|; λ of each loss in the corner."),
    "fig4_density": ("Fig. 4 — Hessian eigenvalue density (stochastic Lanczos quadrature) of CE vs KL, last epoch.",
                     "Symmetric-log eigenvalue axis: a long right tail means sharp directions."),
    "fig5_interepoch": ("Fig. 5 — Cosine of the mean KL gradient with the previous epoch's, KL-only ZQ vs AIT (KD for reference).",
                        "Near 1: every epoch pushes the same way, the student has not reached a minimum."),
    "fig6_crossings": ("Fig. 6 — Fraction of weights whose integer code changes, per layer and epoch (log colour scale).",
                       "Per optimizer step, from the trainer's log; white = no weight crossed a rounding threshold."),
    "fig7_accuracy": ("Fig. 7 — Test accuracy of the quantized student over epochs; PTQ (no training) as a dotted line.",
                      "Mean over seeds (band: ±1 std when several seeds)."),
}


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}"


def _claim(n, text, number, verdict, rule):
    return {"id": n, "claim": text, "number": number, "verdict": verdict, "rule": rule}


def _no_data(n, text, rule, what):
    return _claim(n, text, f"no {what} rows for the runs of this role", NO_DATA, rule)


def _whole(df: pd.DataFrame, metric: str, run: str) -> pd.DataFrame:
    return df[(df["metric"] == metric) & (df["run"] == run) & (df["layer"].astype(str) == "all")]


def claims(tables_dir, roles: Mapping | None = None) -> list[dict]:
    """The paper's claims against the tables: ``[{id, claim, number, verdict, rule}]``."""
    roles = resolve_roles(roles)
    kd, zq, klo, ait = roles["kd"], roles["zq"], roles["kl_only"], roles["ait"]
    t = {n: read_table(tables_dir, n) for n in
         ("cosine", "trace", "eigen", "density", "interepoch", "crossings", "training")}
    out = []

    # 1. CE/KL cosine
    text = "§2.1 Under ZQ the CE and KL gradients fight: cos(∇CE, ∇KL) near or below 0 (lower than with real data)."
    rule = "supported if the ZQ median ≤ 0.1 and below KD's; partly if only below KD's"
    df = t["cosine"]
    z = _whole(df, "cosine", zq)["value"].dropna() if df is not None else pd.Series(dtype=float)
    k = _whole(df, "cosine", kd)["value"].dropna() if df is not None else pd.Series(dtype=float)
    if z.empty:
        out.append(_no_data(1, text, rule, "cosine"))
    else:
        mz, mk = float(z.median()), (float(k.median()) if len(k) else math.nan)
        below = (not math.isnan(mk)) and mz < mk
        v = SUPPORTED if (mz <= 0.1 and (below or math.isnan(mk))) else (PARTLY if below or mz <= 0.1 else NOT_SUPPORTED)
        out.append(_claim(1, text, f"median over {len(z)} epochs: ZQ [{zq}] {_fmt(mz)}; KD [{kd}] {_fmt(mk)}", v, rule))

    # 2. trace
    text = "§2.2 Under ZQ, KL has the smaller Hessian trace (flatter) than CE."
    rule = "supported if tr(KL) < tr(CE) at ≥ 75 % of the ZQ epochs, the last included; partly at ≥ 50 %"
    df = t["trace"]
    if df is None or _whole(df, "trace", zq).empty:
        out.append(_no_data(2, text, rule, "trace"))
    else:
        d = _whole(df, "trace", zq).pivot_table(index="epoch", columns="loss", values="value", aggfunc="mean")
        if not {"ce", "kl"} <= set(d.columns):
            out.append(_no_data(2, text, rule, "CE and KL trace"))
        else:
            d = d.dropna(subset=["ce", "kl"])
            frac = float((d["kl"] < d["ce"]).mean())
            last = d.iloc[-1]
            kk = _whole(df, "trace", kd)
            kd_txt = ""
            if not kk.empty:
                kl_ = kk.groupby("loss")["value"].median()
                kd_txt = f"; KD [{kd}] medians CE {_fmt(kl_.get('ce', math.nan))}, KL {_fmt(kl_.get('kl', math.nan))}"
            v = SUPPORTED if frac >= 0.75 and last["kl"] < last["ce"] else (PARTLY if frac >= 0.5 else NOT_SUPPORTED)
            out.append(_claim(2, text, f"ZQ [{zq}]: tr(KL) < tr(CE) at {frac:.0%} of {len(d)} epochs; last epoch "
                              f"CE {_fmt(last['ce'])}, KL {_fmt(last['kl'])}{kd_txt}", v, rule))

    # 3. slices
    text = "§2.3 Along the top eigenvector, KL's loss surface is flatter than CE's, more so late in training."
    rule = ("rise = mean of L(±k_max) − L(0); supported if rise(KL) < rise(CE) at every sliced ZQ epoch and "
            "the KL/CE ratio is smaller at the last than at the first; partly if KL is flatter at most epochs")
    df = t["eigen"]
    sl = df[(df["metric"] == "slice_loss") & (df["run"] == zq)] if df is not None else None
    if sl is None or sl.empty:
        out.append(_no_data(3, text, rule, "slice"))
    else:
        rises = {}
        for (epoch, loss), g in sl.groupby(["epoch", "loss"]):
            g = g.groupby("k")["value"].mean().sort_index()
            base = float(np.interp(0.0, g.index.values, g.values))
            rises[(epoch, loss)] = float((g.iloc[0] + g.iloc[-1]) / 2 - base)
        epochs = sorted({e for e, _ in rises})
        ratios = {e: rises[(e, "kl")] / rises[(e, "ce")] for e in epochs
                  if (e, "kl") in rises and (e, "ce") in rises and rises[(e, "ce")] > 0}
        if not ratios:
            out.append(_no_data(3, text, rule, "CE and KL slice"))
        else:
            es = sorted(ratios)
            flatter = [ratios[e] < 1 for e in es]
            later = ratios[es[-1]] < ratios[es[0]] if len(es) > 1 else False
            v = SUPPORTED if all(flatter) and later else (PARTLY if np.mean(flatter) > 0.5 else NOT_SUPPORTED)
            out.append(_claim(3, text, "ZQ [{}] rise ratio KL/CE: {}".format(
                zq, ", ".join(f"epoch {int(e)} {_fmt(ratios[e])}" for e in es)), v, rule))

    # 4. density
    text = "§2.4 CE's eigenvalue density has a long tail of large eigenvalues; KL's is concentrated at small ones."
    rule = ("from the SLQ Ritz values at the last analysed epoch: supported if KL's top Ritz value and KL's "
            "spectral mass above 10 % of CE's top Ritz value are both below CE's; partly if one is")
    df = t["density"]
    rz = df[(df["metric"] == "ritz") & (df["run"] == zq)] if df is not None else None
    if rz is None or rz.empty or not {"ce", "kl"} <= set(rz["loss"]):
        out.append(_no_data(4, text, rule, "density (Ritz)"))
    else:
        rz = rz[rz["epoch"] == rz["epoch"].max()]
        top = rz.groupby("loss")["x"].max()
        thr = 0.1 * float(top["ce"])
        mass = {l: float(g.loc[g["x"] > thr, "value"].sum() / g["value"].sum()) for l, g in rz.groupby("loss")}
        a, b = top["kl"] < top["ce"], mass["kl"] < mass["ce"]
        v = SUPPORTED if a and b else (PARTLY if a or b else NOT_SUPPORTED)
        out.append(_claim(4, text, f"ZQ [{zq}] epoch {int(rz['epoch'].max())}: top Ritz value CE {_fmt(top['ce'])}, "
                          f"KL {_fmt(top['kl'])}; mass above {_fmt(thr)}: CE {_fmt(mass['ce'])}, KL {_fmt(mass['kl'])}",
                          v, rule))

    # 5. inter-epoch cosine
    text = "§2.5 Under KL-only ZQ the mean KL gradient keeps its direction from epoch to epoch (high inter-epoch cosine)."
    rule = "supported if the KL-only median ≥ 0.5 and above KD's (when KD was analysed); partly if one holds"
    df = t["interepoch"]
    z = _whole(df, "interepoch_cosine", klo)["value"].dropna() if df is not None else pd.Series(dtype=float)
    if z.empty:
        out.append(_no_data(5, text, rule, "inter-epoch"))
    else:
        mz = float(z.median())
        others = []
        mk = math.nan
        for role_run, name in ((ait, "AIT"), (kd, "KD")):
            s = _whole(df, "interepoch_cosine", role_run)["value"].dropna()
            if len(s):
                others.append(f"{name} [{role_run}] {_fmt(float(s.median()))}")
                if role_run == kd:
                    mk = float(s.median())
        high, above = mz >= 0.5, (math.isnan(mk) or mz > mk)
        v = SUPPORTED if high and above else (PARTLY if high or above else NOT_SUPPORTED)
        out.append(_claim(5, text, f"median over epochs: KL-only [{klo}] {_fmt(mz)}" +
                          ("; " + "; ".join(others) if others else ""), v, rule))

    # 6. crossings
    text = "§2.6 Under KL-only ZQ, tiny fractions of weights cross a rounding threshold (order 1e-5 per step), in a few layers."
    rule = ("mean over layers and epochs of the per-step fraction; a layer 'moves' if its mean is > 1e-5; "
            "supported if the mean < 1e-4 and at most half the layers move; partly if the mean < 1e-3")
    df = t["crossings"]
    cz = df[(df["metric"] == "step_crossing_fraction") & (df["run"] == klo) & (df["layer"].astype(str) != "all")] \
        if df is not None else None
    if cz is None or cz.empty:
        out.append(_no_data(6, text, rule, "per-step crossing"))
    else:
        per_layer = cz.groupby("layer")["value"].mean()
        m = float(per_layer.mean())
        moving = int((per_layer > 1e-5).sum())
        extra = ""
        if df is not None:
            ca = df[(df["metric"] == "step_crossing_fraction") & (df["run"] == ait) & (df["layer"].astype(str) != "all")]
            if len(ca):
                extra = f"; AIT [{ait}] {_fmt(float(ca.groupby('layer')['value'].mean().mean()))}"
        v = SUPPORTED if m < 1e-4 and moving <= len(per_layer) / 2 else (PARTLY if m < 1e-3 else NOT_SUPPORTED)
        out.append(_claim(6, text, f"KL-only [{klo}]: mean per-step fraction {_fmt(m)}, {moving} of "
                          f"{len(per_layer)} layers move{extra}", v, rule))

    # 7. headline accuracy
    text = "§1 AIT beats GDFQ and KL-only at low bit-width (paper, CIFAR-10 R20 W4A4: GDFQ 90.25 %, AIT 91.23 %)."
    rule = "final-epoch test accuracy, mean over seeds; supported if AIT > GDFQ and AIT > KL-only; partly if one holds"
    df = t["training"]
    acc = df[df["metric"] == "test_acc"] if df is not None else None
    if acc is None or acc.empty:
        out.append(_no_data(7, text, rule, "accuracy"))
    else:
        final = {}
        for (run, seed), g in acc.groupby(["run", "seed"], dropna=False):
            final.setdefault(run, []).append(float(g.sort_values("epoch")["value"].iloc[-1]))
        stats = {r: (float(np.mean(v)), float(np.std(v)), len(v)) for r, v in final.items()}
        if ait not in stats or (zq not in stats and klo not in stats):
            out.append(_no_data(7, text, rule, "AIT/GDFQ/KL-only accuracy"))
        else:
            def s(r):
                m, sd, n = stats[r]
                return f"{_fmt(m, 4)} ± {_fmt(sd, 2)} (n={n})" if n > 1 else f"{_fmt(m, 4)} (1 seed)"
            parts = [f"{name} [{r}] {s(r)}" for r, name in ((ait, "AIT"), (zq, "GDFQ"), (klo, "KL-only")) if r in stats]
            wins = [stats[ait][0] > stats[r][0] for r in (zq, klo) if r in stats]
            v = SUPPORTED if all(wins) else (PARTLY if any(wins) else NOT_SUPPORTED)
            out.append(_claim(7, text, "; ".join(parts), v, rule))
    return out


def claims_table(rows: list[dict]) -> str:
    """The claims as a Markdown table."""
    lines = ["| # | The paper's claim | Our number | Verdict |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['id']} | {r['claim']} | {r['number']} | **{r['verdict']}** |")
    return "\n".join(lines)


def write_readme(tables_dir="figures/tables", out_dir="figures", roles: Mapping | None = None,
                 figures=None, timings: Mapping[str, float] | None = None, recipe: str | None = None,
                 settings: Mapping | None = None) -> Path:
    """Write ``<out_dir>/README.md``: the figures with captions, the findings table, the rules."""
    out_dir = Path(out_dir)
    tables_dir = Path(tables_dir)
    roles = resolve_roles(roles)
    rows = claims(tables_dir, roles)
    stems = [Path(f).stem for f in figures] if figures is not None else \
        [s for s in CAPTIONS if (out_dir / f"{s}.png").exists()]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Figures: the loss-landscape argument of AIT (Choi et al., CVPR 2022)", "",
             f"Generated by `make figures`{f' from `{recipe}`' if recipe else ''} on {when}. "
             "Every figure has the CSV of its data beside it; the full tidy tables are in "
             f"`{tables_dir.name}/`. Redraw without recomputing: `landscape plot`.", "",
             "Roles: " + ", ".join(f"{k} = `{v}`" for k, v in roles.items() if k != "accuracy") + ".", ""]
    lines += ["## Findings: the paper's claims against our data", "",
              "Our runs are a small CPU model on a small data set (unless the recipe says otherwise), not "
              "the paper's ResNet-20 on CIFAR-10; a claim that does not hold here is reported as such.", "",
              claims_table(rows), "", "How each verdict is decided:", ""]
    lines += [f"{r['id']}. {r['rule']}." for r in rows]
    lines += ["", "Read the CE-vs-KL comparisons (claims 2-4) with their scale in mind: the KL is "
              "T²·KL(teacher ‖ student) with the temperature and reduction stored in each checkpoint "
              "(the element-wise `mean` reduction is C times smaller than `batchmean`), so its "
              "curvature scales with those choices. The slices move by k·e·ĝ with ĝ = |⟨∇L, e⟩| of "
              "the same loss, which magnifies a larger-scale loss further. Every number comes from the "
              "analysis batches stored in the checkpoints; the trace carries its standard error "
              "(`tables/trace.csv`)."]
    lines += ["", "## Figures", ""]
    for stem in stems:
        first, second = CAPTIONS.get(stem, (stem, ""))
        lines += [f"### {stem}", "", f"![{stem}]({stem}.png)", "", f"**{first}**  ", second,
                  f"Data: [`{stem}.csv`]({stem}.csv) · vector: [`{stem}.pdf`]({stem}.pdf)", ""]
    missing = [s for s in CAPTIONS if s not in stems]
    if missing:
        lines += [f"Not drawn (no data in the tables): {', '.join(missing)}.", ""]
    if settings:
        import json

        lines += ["## Analysis settings", ""]
        for key, value in settings.items():
            lines.append(f"- `{key}`: `{json.dumps(value, sort_keys=True, default=str)}`")
        lines.append("")
    if timings:
        lines += ["## Time of each stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
        lines.append("")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
