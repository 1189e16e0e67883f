"""The seven figures of the paper's loss-landscape argument, drawn from the tidy CSV tables only.

    from landscape.figures import plot_all
    plot_all("figures/tables", "figures")      # -> [Path("figures/fig1_cosine.png"), ...]

Every figure is written as PNG and PDF with the CSV of exactly the rows it shows beside it
(same stem). The tables are long-form (one observation per row), so seaborn does the
aggregation over seeds: ``lineplot`` with ``hue``/``style`` draws the mean over seeds and a
95 % bootstrap band of it (:data:`landscape.findings.readme.BANDS` says, per figure, what each
band or error bar is). Colours follow the paper — CE red, KL blue — from the Okabe-Ito palette,
which colour-blind readers can tell apart; every series also differs in line style and marker,
so that the figures survive a greyscale printer. Estimates that missed their stopping rule
(``converged`` false) are drawn as hollow markers. Nothing here computes a Hessian: redrawing
all figures takes seconds.

Which run plays which role (KD, ZQ, KL-only, AIT, PTQ) comes from ``roles`` (the recipe's
``[figures]`` table); when a role's run is absent from a table, the figure shows the runs that
are there.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from landscape.tables import ROLE_NAMES, TABLE_NAMES, TableError, load_tables, not_converged, resolve_roles  # noqa: E402

__all__ = ["FIGURES", "FigureError", "plot_all"]

# Okabe-Ito: safe for the common colour-vision deficiencies.
LOSS_COLORS = {"ce": "#D55E00", "kl": "#0072B2"}  # vermillion (the paper's red), blue
LOSS_DASHES = {"ce": "", "kl": (4, 2)}
LOSS_MARKERS = {"ce": "o", "kl": "s"}
LOSS_LABELS = {"ce": "CE", "kl": "KL"}

ROLE_STYLES = {
    "kd": ("#000000", "", "o"),
    "zq": ("#E69F00", (4, 2), "^"),
    "kl_only": ("#56B4E9", (6, 2, 1, 2), "s"),
    "ait": ("#009E73", "", "D"),
    "ptq": ("#7F7F7F", (1, 2), "X"),
}
_FALLBACK = [("#CC79A7", (5, 1), "v"), ("#F0E442", (1, 1), "P"), ("#999999", (3, 1, 1, 1), "X")]
ROLE_LABELS = {"kd": "KD (real data)", "zq": "ZQ (GDFQ, synthetic)", "kl_only": "KL-only ZQ",
               "ait": "AIT (KL + GI)", "ptq": "PTQ (no training)"}

FIGURES = ("fig1_cosine", "fig2_trace", "fig3_slices", "fig4_density", "fig5_interepoch",
           "fig6_crossings", "fig7_accuracy")
#: seaborn's band: a 95 % bootstrap interval of the mean over seeds, seeded (same picture every time).
SEED_BAND = dict(errorbar=("ci", 95), n_boot=1000, seed=0)


class FigureError(TableError):
    """Tables missing or unusable: one clear line."""


# ----------------------------------------------------------------------------- helpers


class _Runs:
    """Labels and styles of runs, by role."""

    def __init__(self, roles: dict):
        self.roles = roles
        self._extra: dict[str, tuple] = {}

    def role(self, run: str) -> str | None:
        return next((r for r in ROLE_NAMES if self.roles.get(r) == run), None)

    def label(self, run: str) -> str:
        role = self.role(run)
        return f"{ROLE_LABELS[role]} [{run}]" if role else str(run)

    def style(self, run: str) -> tuple:
        role = self.role(run)
        if role:
            return ROLE_STYLES[role]
        if run not in self._extra:
            self._extra[run] = _FALLBACK[len(self._extra) % len(_FALLBACK)]
        return self._extra[run]

    def seaborn(self, runs: list[str]) -> dict:
        """``hue``/``style`` keyword arguments for a lineplot over the ``label`` column."""
        labels = [self.label(r) for r in runs]
        styles = [self.style(r) for r in runs]
        return dict(hue="label", style="label", hue_order=labels, style_order=labels,
                    palette=dict(zip(labels, [s[0] for s in styles])),
                    dashes=dict(zip(labels, [s[1] for s in styles])),
                    markers=dict(zip(labels, [s[2] for s in styles])))


def _with_loss_label(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(Loss=df["loss"].map(lambda l: LOSS_LABELS.get(l, l)))


def _loss_kwargs(losses) -> dict:
    """``hue``/``style`` keyword arguments over the ``Loss`` column (see :func:`_with_loss_label`)."""
    order = sorted(set(losses), key=lambda l: (l != "ce", l))
    labels = [LOSS_LABELS.get(l, l) for l in order]
    return dict(hue="Loss", style="Loss", hue_order=labels, style_order=labels,
                palette={LOSS_LABELS.get(l, l): LOSS_COLORS.get(l, "#CC79A7") for l in order},
                dashes={LOSS_LABELS.get(l, l): LOSS_DASHES.get(l, (1, 1)) for l in order},
                markers={LOSS_LABELS.get(l, l): LOSS_MARKERS.get(l, "v") for l in order})


def _pick_runs(df: pd.DataFrame, wanted: list[str]) -> list[str]:
    """The wanted runs present in ``df`` (in that order); all of df's runs if none is."""
    present = list(dict.fromkeys(df["run"].astype(str)))
    chosen = [r for r in wanted if r in present]
    return chosen or present


def _hollow(ax, df: pd.DataFrame, x: str, y: str, color) -> None:
    """Hollow markers on the points whose estimate missed its stopping rule."""
    bad = df[not_converged(df)]
    if len(bad):
        ax.scatter(bad[x], bad[y], s=42, facecolors="white", edgecolors=color, linewidths=1.4, zorder=5)


def _save(fig, out_dir: Path, stem: str, data: pd.DataFrame) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(out_dir / f"{stem}.pdf", bbox_inches="tight")
    data.to_csv(out_dir / f"{stem}.csv", index=False)
    plt.close(fig)
    return png


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)


def _legend(ax, title: str | None = None) -> None:
    if ax.get_legend() is not None:
        ax.legend(fontsize=8, title=title, title_fontsize=7)


# ----------------------------------------------------------------------------- figures


def _cosine_over_epochs(df: pd.DataFrame, runs: list[str], styler: _Runs, ylabel: str, title: str):
    d = df[(df["layer"] == "all") & df["run"].isin(runs)].copy()
    if d.empty:
        return None
    d["label"] = d["run"].map(styler.label)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.axhline(0, color="0.4", linewidth=0.8, zorder=0)
    sns.lineplot(data=d, x="epoch", y="value", ax=ax, linewidth=1.8, **styler.seaborn(runs), **SEED_BAND)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    _epoch_axis(ax)
    _legend(ax, "whole model; band: 95 % over seeds")
    return fig, d


def fig_cosine(tables: dict, roles: dict, styler: _Runs):
    """Fig. 1: cos(∇CE, ∇KL) over epochs, KD vs ZQ."""
    df = tables.get("cosine")
    if df is None:
        return None
    df = df[df["metric"] == "cosine"]
    runs = _pick_runs(df, [roles["kd"], roles["zq"]])
    return _cosine_over_epochs(df, runs, styler, "cos(∇CE, ∇KL)", "CE and KL gradients: aligned (>0) or fighting (≤0)?")


def fig_trace(tables: dict, roles: dict, styler: _Runs):
    """Fig. 2: Hessian trace over epochs, CE vs KL, one panel per regime."""
    df = tables.get("trace")
    if df is None:
        return None
    df = df[(df["metric"] == "trace") & (df["layer"] == "all")]
    if "curvature" in df:
        df = df[df["curvature"].fillna("hessian") == "hessian"]
    runs = _pick_runs(df, [roles["kd"], roles["zq"]])
    df = df[df["run"].isin(runs)]
    if df.empty:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        d = df[df["run"] == run]
        sns.lineplot(data=_with_loss_label(d), x="epoch", y="value", ax=ax, linewidth=1.8, **_loss_kwargs(d["loss"]),
                     **SEED_BAND)
        for loss, dl in d.groupby("loss"):
            color = LOSS_COLORS.get(loss, "#CC79A7")
            g = dl.groupby("epoch").agg(value=("value", "mean"), se=("stderr", lambda s: math.sqrt(np.nanmean(s ** 2))),
                                        n=("value", "size"))
            ax.errorbar(g.index, g["value"], yerr=2 * g["se"].fillna(0) / np.sqrt(g["n"]), fmt="none",
                        ecolor=color, capsize=3, linewidth=1)
            _hollow(ax, dl, "epoch", "value", color)
        ax.set_title(styler.label(run), fontsize=10)
        _epoch_axis(ax)
        if (d["value"] > 0).all():
            ax.set_yscale("log")
        ax.set_ylabel("Hessian trace (Hutchinson)")
        _legend(ax)
    fig.suptitle("Curvature of each loss: smaller trace = flatter (bars: ±2 probe s.e.; band: 95 % over seeds)",
                 fontsize=10)
    fig.tight_layout()
    return fig, df


def fig_slices(tables: dict, roles: dict, styler: _Runs):
    """Fig. 3: L(θ + k·e·ĝ) − L(θ) along each loss's top eigenvector: re-quantized (solid) and
    with rounding offsets frozen at θ (dotted), a grid of epochs; mean over seeds, shaded from the
    lowest to the highest seed's curve."""
    df = tables.get("eigen")
    if df is None:
        return None
    sl = df[df["metric"] == "slice_loss"].copy()
    if "slice" not in sl:
        sl["slice"] = "requantized"
    sl = sl[sl["slice"].fillna("requantized").isin(["requantized", "frozen"])]
    runs = _pick_runs(sl, [roles["zq"], roles["kd"]])
    sl = sl[sl["run"].isin(runs)]
    if sl.empty:
        return None
    epochs = sorted(sl["epoch"].unique())[:6]
    sl = sl[sl["epoch"].isin(epochs)]
    # each curve relative to its own value at k = 0 (per seed), then the mean over seeds
    keys = ["run", "seed", "epoch", "loss", "slice"]
    sl["seed"] = sl["seed"].fillna(-1)
    base = sl.groupby(keys).apply(lambda g: float(np.interp(0.0, g["k"], g["value"])), include_groups=False)
    sl = sl.join(base.rename("base"), on=keys)
    sl["delta"] = sl["value"] - sl["base"]
    lam = df[(df["metric"] == "top_eigenvalue") & df["run"].isin(runs) & df["epoch"].isin(epochs)]
    fig, axes = plt.subplots(len(runs), len(epochs), figsize=(2.6 * len(epochs) + 0.6, 2.4 * len(runs) + 0.6),
                             sharex=True, squeeze=False)
    for i, run in enumerate(runs):
        for j, epoch in enumerate(epochs):
            ax = axes[i][j]
            d = sl[(sl["run"] == run) & (sl["epoch"] == epoch)]
            ax.axvline(0, color="0.6", linewidth=0.6, zorder=0)
            for (loss, kind), g in d.groupby(["loss", "slice"]):
                per_seed = g.pivot_table(index="k", columns="seed", values="delta", aggfunc="mean").sort_index()
                m = per_seed.mean(axis=1)
                if per_seed.shape[1] > 1:
                    ax.fill_between(per_seed.index, per_seed.min(axis=1), per_seed.max(axis=1),
                                    color=LOSS_COLORS.get(loss, "#CC79A7"), alpha=0.15 if kind == "requantized" else 0.08,
                                    linewidth=0)
                ax.plot(m.index, m.values, color=LOSS_COLORS.get(loss, "#CC79A7"),
                        linestyle="-" if kind == "requantized" else ":", linewidth=1.8 if kind == "requantized" else 1.4,
                        marker=LOSS_MARKERS.get(loss) if kind == "requantized" else None, markersize=3,
                        markevery=max(1, len(m) // 7), label=f"{LOSS_LABELS.get(loss, loss)}, {kind}")
            notes = []
            for loss, lv in lam[(lam["run"] == run) & (lam["epoch"] == epoch)].groupby("loss"):
                flag = "" if not not_converged(lv).any() else " (unconv.)"
                notes.append(f"λ{LOSS_LABELS.get(loss, loss)}={lv['value'].mean():.3g}{flag}")
            if notes:
                ax.text(0.5, 0.97, "  ".join(notes), transform=ax.transAxes, fontsize=7, va="top", ha="center",
                        bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
            if i == 0:
                ax.set_title(f"epoch {int(epoch)}", fontsize=9)
            if i == len(runs) - 1:
                ax.set_xlabel("k")
            if j == 0:
                ax.set_ylabel(f"{styler.label(run)}\nL(θ+k·e·ĝ) − L(θ)", fontsize=8)
            ax.grid(True, alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("1-D loss along each loss's top Hessian eigenvector: solid re-quantized (deployed), "
                 "dotted rounding offsets frozen (the STE's Hessian)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig, sl


def _symlog_x(ax, span: float, lo: float, hi: float) -> None:
    """Symmetric-log eigenvalue axis with sparse, non-overlapping decade ticks."""
    linthresh = max(span * 1e-2, 1e-12)
    ax.set_xscale("symlog", linthresh=linthresh)
    top = math.floor(math.log10(max(span, 1e-12)))
    decades = [10.0 ** k for k in range(math.ceil(math.log10(linthresh)), top + 1)]
    ticks = sorted([0.0] + [d for d in decades if d <= hi] + [-d for d in decades if -d >= lo])
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0" if t == 0 else f"{t:.0e}".replace("e+0", "e").replace("e-0", "e-") for t in ticks],
                       fontsize=7)
    ax.set_xlim(lo - 0.02 * span, hi + 0.02 * span)


#: Kernel width of the drawn densities, in units of asinh(x/c) (c: the symlog axis's linear range).
DENSITY_BANDWIDTH = 0.15


def _symlog_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, c: float) -> np.ndarray:
    r"""The Ritz values' spectral density smoothed on the scale of a symmetric-log axis.

    With u = asinh(x/c), a Gaussian kernel of width h in u gives
    φ(x) = Σ_i w_i 𝒩(u(x); u(θ_i), h²) · du/dx,   du/dx = 1 / √(x² + c²),
    a density in x (it integrates to Σ w_i) that resolves the bulk near 0, the negative part and
    the far tail alike — a width fixed in x (1 % of the range) blurs everything below it.
    """
    u, ui = np.arcsinh(grid / c), np.arcsinh(nodes / c)
    h = DENSITY_BANDWIDTH
    k = np.exp(-0.5 * ((u[:, None] - ui[None, :]) / h) ** 2) / (h * np.sqrt(2 * np.pi))
    return (k * weights[None, :]).sum(axis=1) / np.sqrt(grid ** 2 + c ** 2)


def _density_panel(ax, ritz: pd.DataFrame, series: list, span: float, drawn: list) -> None:
    """Each series' density from its Ritz values (the mean of the seeds' densities, i.e. all seeds
    pooled with each seed weighing 1/n, shaded from the lowest to the highest seed's), and the
    Ritz values themselves as stems along the bottom (height ∝ quadrature weight, log scale)."""
    c = max(span * 1e-2, 1e-12)
    lo, hi = float(ritz["x"].min()), float(ritz["x"].max())
    pad = 0.05 * (hi - lo + c)
    u = np.linspace(np.arcsinh((lo - pad) / c), np.arcsinh((hi + pad) / c), 600)
    grid = c * np.sinh(u)
    ymax = 0.0
    for key, color, dashes, label in series:
        r = ritz[key(ritz)]
        if r.empty:
            continue
        per_seed = np.stack([_symlog_density(g["x"].to_numpy(float), g["value"].to_numpy(float), grid, c)
                             for _, g in r.groupby(r["seed"].fillna(-1))])
        y = per_seed.mean(axis=0)   # = the density of all seeds' Ritz values pooled, each seed weighing 1/n
        if len(per_seed) > 1:
            ax.fill_between(grid, per_seed.min(axis=0), per_seed.max(axis=0), color=color, alpha=0.12, linewidth=0)
        ax.plot(grid, y, color=color, dashes=dashes or (None, None), linewidth=1.6, label=label)
        drawn.append(pd.DataFrame({"series": label, "x": grid, "density": y, "density_min": per_seed.min(axis=0),
                                   "density_max": per_seed.max(axis=0)}))
        ymax = max(ymax, float(y.max()))
    ax.set_yscale("log")
    floor = ymax * 1e-6 if ymax > 0 else 1e-12
    ax.set_ylim(floor, ymax * 3 if ymax > 0 else 1)
    for i, (key, color, _, _) in enumerate(series):
        r = ritz[key(ritz)]
        if len(r):
            h = floor * (ymax / floor) ** (0.08 + 0.1 * i + 0.25 * (r["value"] / r["value"].max()))
            ax.vlines(r["x"], floor, h, color=color, linewidth=0.5, alpha=0.45)
    _symlog_x(ax, span, lo - pad, hi + pad)
    ax.set_xlabel("eigenvalue")
    ax.grid(True, alpha=0.3)


def fig_density(tables: dict, roles: dict, styler: _Runs):
    """Fig. 4: SLQ density of CE vs KL per run (Hessian), and Hessian vs GGN on ZQ."""
    df = tables.get("density")
    if df is None:
        return None
    if "curvature" not in df:
        df = df.assign(curvature="hessian")
    df = df.assign(curvature=df["curvature"].fillna("hessian"))
    runs = _pick_runs(df[df["metric"] == "density"], [roles["kd"], roles["zq"]])
    df = df[df["run"].isin(runs)]
    last = df.groupby("run")["epoch"].transform("max")
    df = df[df["epoch"] == last]
    ritz = df[df["metric"] == "ritz"]
    if ritz.empty:
        return None
    ggn_run = roles["zq"] if ((ritz["curvature"] == "ggn") & (ritz["run"] == roles["zq"])).any() else None
    panels = [(run, "hessian") for run in runs] + ([(ggn_run, "ggn")] if ggn_run else [])
    span = float(np.nanmax(np.abs(ritz["x"])))
    drawn: list[pd.DataFrame] = []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (run, mode) in zip(axes[0], panels):
        rr = ritz[ritz["run"] == run]
        if mode == "hessian":
            series = [((lambda t, l=loss: (t["loss"] == l) & (t["curvature"] == "hessian")), LOSS_COLORS.get(loss, "#CC79A7"),
                       LOSS_DASHES.get(loss), LOSS_LABELS.get(loss, loss)) for loss in sorted(rr["loss"].unique(), key=lambda l: (l != "ce", l))]
            title = f"{styler.label(run)}, epoch {int(rr['epoch'].max())}"
        else:
            series = []
            for loss in sorted(rr["loss"].unique(), key=lambda l: (l != "ce", l)):
                for curv, dashes in (("hessian", ""), ("ggn", (2, 1.5))):
                    series.append(((lambda t, l=loss, c=curv: (t["loss"] == l) & (t["curvature"] == c)),
                                   LOSS_COLORS.get(loss, "#CC79A7"), dashes,
                                   f"{LOSS_LABELS.get(loss, loss)} {'Hessian' if curv == 'hessian' else 'GGN'}"))
            title = f"{styler.label(run)}: Hessian vs Gauss-Newton"
        before = len(drawn)
        _density_panel(ax, rr, series, span, drawn)
        for d in drawn[before:]:
            d.insert(0, "panel", title)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("spectral density (SLQ; stems: Ritz values)")
    fig.suptitle("Curvature spectrum: a long tail of large eigenvalues = sharp", fontsize=10)
    fig.tight_layout()
    return fig, pd.concat(drawn, ignore_index=True)


def fig_interepoch(tables: dict, roles: dict, styler: _Runs):
    """Fig. 5: cosine of an epoch's mean training gradient with the previous epoch's."""
    df = tables.get("interepoch")
    if df is None:
        return None
    df = df[df["metric"] == "interepoch_cosine"]
    runs = _pick_runs(df, [roles["kl_only"], roles["ait"], roles["kd"]]) if not df.empty else []
    return _cosine_over_epochs(df, runs, styler, "cos(ḡ(t), ḡ(t−1)), epoch-mean gradients",
                               "Does the training gradient keep its direction? (high = no minimum reached)")


def fig_crossings(tables: dict, roles: dict, styler: _Runs):
    """Fig. 6: fraction of weights crossing a rounding threshold per step, layer × epoch heat map."""
    df = tables.get("crossings")
    if df is None:
        return None
    metric = "step_crossing_fraction" if (df["metric"] == "step_crossing_fraction").any() else "code_change_fraction"
    df = df[(df["metric"] == metric) & (df["layer"] != "all")]
    runs = _pick_runs(df, [roles["kl_only"], roles["ait"]])
    df = df[df["run"].isin(runs)]
    if df.empty:
        return None
    grids = {}
    for run in runs:
        d = df[df["run"] == run]
        order = list(dict.fromkeys(d["layer"]))
        grids[run] = d.pivot_table(index="layer", columns="epoch", values="value", aggfunc="mean").reindex(order)
    vals = pd.concat([g.stack() for g in grids.values()])
    pos = vals[vals > 0]
    vmin = float(pos.min()) if len(pos) else 1e-6
    vmax = max(float(pos.max()) if len(pos) else 1.0, vmin * 10)
    n_layers = max(len(g) for g in grids.values())
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs) + 1.0, 0.28 * n_layers + 1.8), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("cividis").with_extremes(bad="#FFFFFF")
    for i, (ax, run) in enumerate(zip(axes[0], runs)):
        g = grids[run].where(grids[run] > 0)
        sns.heatmap(g, ax=ax, cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax), cbar=i == len(runs) - 1,
                    cbar_kws={"label": "weights changing integer code\n(mean per-step fraction; white = none)"},
                    xticklabels=max(1, g.shape[1] // 10), yticklabels=True)
        ax.set_title(styler.label(run), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("")
        ax.tick_params(labelsize=7)
    fig.suptitle("Rounding-threshold crossings per layer (mean over seeds)", fontsize=10)
    return fig, df


def fig_accuracy(tables: dict, roles: dict, styler: _Runs):
    """Fig. 7: student test accuracy over epochs (mean over seeds, 95 % band); PTQ as a line."""
    df = tables.get("training")
    if df is None:
        return None
    df = df[df["metric"] == "test_acc"]
    runs = _pick_runs(df, list(roles["accuracy"])) if not df.empty else []
    df = df[df["run"].isin(runs)].copy()
    if df.empty:
        return None
    df["label"] = df["run"].map(styler.label)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    single = [r for r in runs if r == roles.get("ptq") or df[df["run"] == r]["epoch"].nunique() == 1]
    curves = [r for r in runs if r not in single]
    if curves:
        sns.lineplot(data=df[df["run"].isin(curves)], x="epoch", y="value", ax=ax, linewidth=1.8,
                     **styler.seaborn(curves), **SEED_BAND)
    for run in single:
        color, dashes, _ = styler.style(run)
        ax.axhline(df[df["run"] == run]["value"].mean(), color=color, linestyle=":", linewidth=1.5,
                   label=styler.label(run))
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title("Quantized student accuracy (mean over seeds, band: 95 %)", fontsize=10)
    _epoch_axis(ax)
    ax.legend(fontsize=8)
    return fig, df


_DRAWERS: dict[str, Callable] = {
    "fig1_cosine": fig_cosine, "fig2_trace": fig_trace, "fig3_slices": fig_slices,
    "fig4_density": fig_density, "fig5_interepoch": fig_interepoch, "fig6_crossings": fig_crossings,
    "fig7_accuracy": fig_accuracy,
}


def plot_all(tables_dir="figures/tables", out_dir="figures", roles: Mapping | None = None,
             tables: Mapping | None = None) -> list[Path]:
    """Draw every figure whose table is there; returns the PNG paths (PDF and CSV beside each).

    A figure whose table is missing or empty is skipped with a warning; no table at all is an
    error naming the folder. ``tables``: the tables already read from ``tables_dir``
    (:func:`landscape.tables.load_tables`), so that a caller reading them anyway reads them once.
    """
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    roles = resolve_roles(roles)
    if not tables_dir.is_dir():
        raise FigureError(f"no tables folder {str(tables_dir)!r}: run `landscape analyze RUN_DIR...` "
                          "or `make figures` first")
    tables = {n: t for n, t in (load_tables(tables_dir) if tables is None else tables).items() if t is not None}
    if not tables:
        raise FigureError(f"no tables in {str(tables_dir)!r} (expected {', '.join(t + '.csv' for t in TABLE_NAMES)}): "
                          "run `landscape analyze RUN_DIR...` first")
    styler = _Runs(roles)
    paths = []
    with plt.rc_context({"font.size": 9, "axes.titlesize": 10, "legend.frameon": False,
                         "pdf.fonttype": 42, "svg.fonttype": "none"}):
        for stem, draw in _DRAWERS.items():
            try:
                made = draw(tables, roles, styler)
            except (KeyError, ValueError) as exc:  # a malformed table: say which, keep drawing
                warnings.warn(f"{stem}: could not draw from the tables ({type(exc).__name__}: {exc})")
                plt.close("all")
                continue
            if made is None:
                warnings.warn(f"{stem}: skipped, its table has no rows for it in {tables_dir}")
                continue
            fig, data = made
            paths.append(_save(fig, out_dir, stem, data))
    return paths
