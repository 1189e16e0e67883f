"""The seven figures of the paper's loss-landscape argument, drawn from the tidy CSV tables only.

    from landscape.figures import plot_all
    plot_all("figures/tables", "figures")      # -> [Path("figures/fig1_cosine.png"), ...]

Every figure is written as PNG and PDF with the CSV of exactly the rows it shows beside it
(same stem). Colours follow the paper -- CE red, KL blue -- from the Okabe-Ito palette, which
colour-blind readers can tell apart; every series also differs in line style and marker, so
that the figures survive a greyscale printer. Nothing here computes a Hessian: redrawing all
figures takes seconds.

Which run plays which role (KD = real-data distillation, ZQ = zero-shot GDFQ, KL-only, AIT,
PTQ) comes from ``roles`` (the recipe's ``[figures]`` table); when a role's run is absent
from a table, the figure shows the runs that are there.
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
from matplotlib.colors import LogNorm  # noqa: E402

from landscape.tables import TableError, read_table, resolve_roles  # noqa: E402

# Okabe-Ito: safe for the common colour-vision deficiencies.
CE_STYLE = dict(color="#D55E00", linestyle="-", marker="o")     # vermillion (the paper's red)
KL_STYLE = dict(color="#0072B2", linestyle="--", marker="s")    # blue
LOSS_STYLES = {"ce": CE_STYLE, "kl": KL_STYLE}
LOSS_LABELS = {"ce": "CE", "kl": "KL"}

RUN_STYLES = {
    "kd": dict(color="#000000", linestyle="-", marker="o"),
    "zq": dict(color="#E69F00", linestyle="--", marker="^"),
    "kl_only": dict(color="#56B4E9", linestyle="-.", marker="s"),
    "ait": dict(color="#009E73", linestyle="-", marker="D"),
    "ptq": dict(color="#7F7F7F", linestyle=":", marker=None),
}
_FALLBACK_STYLES = [
    dict(color="#CC79A7", linestyle=(0, (5, 1)), marker="v"),
    dict(color="#F0E442", linestyle=(0, (1, 1)), marker="P"),
    dict(color="#999999", linestyle=(0, (3, 1, 1, 1)), marker="X"),
]
ROLE_LABELS = {"kd": "KD (real data)", "zq": "ZQ (GDFQ, synthetic)", "kl_only": "KL-only ZQ",
               "ait": "AIT (KL + GI)", "ptq": "PTQ (no training)"}

FIGURES = ("fig1_cosine", "fig2_trace", "fig3_slices", "fig4_density", "fig5_interepoch",
           "fig6_crossings", "fig7_accuracy")


class FigureError(TableError):
    """Tables missing or unusable: one clear line."""


# ----------------------------------------------------------------------------- helpers


def _role_of(run: str, roles: dict) -> str | None:
    for role in ("kd", "zq", "kl_only", "ait", "ptq"):
        if roles.get(role) == run:
            return role
    return None


class _Styler:
    def __init__(self, roles: dict):
        self.roles = roles
        self._extra: dict[str, dict] = {}

    def style(self, run: str) -> dict:
        role = _role_of(run, self.roles)
        if role:
            return dict(RUN_STYLES[role])
        if run not in self._extra:
            self._extra[run] = dict(_FALLBACK_STYLES[len(self._extra) % len(_FALLBACK_STYLES)])
        return dict(self._extra[run])

    def label(self, run: str) -> str:
        role = _role_of(run, self.roles)
        return f"{ROLE_LABELS[role]} [{run}]" if role else run


def _pick_runs(df: pd.DataFrame, wanted: list[str]) -> list[str]:
    """The wanted runs present in ``df`` (in that order); all of df's runs if none is."""
    present = list(dict.fromkeys(df["run"].astype(str)))
    chosen = [r for r in wanted if r in present]
    return chosen or present


def _mean_over_seeds(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    g = df.groupby(by, sort=True)["value"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    return out


def _save(fig, out_dir: Path, stem: str, data: pd.DataFrame) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(out_dir / f"{stem}.pdf", bbox_inches="tight")
    data.to_csv(out_dir / f"{stem}.csv", index=False)
    plt.close(fig)
    return png


def _line(ax, x, y, style: dict, label: str, n_points: int | None = None, **kw):
    st = dict(style)
    if n_points is not None and n_points > 30:
        st["markevery"] = max(1, n_points // 12)
    return ax.plot(x, y, label=label, linewidth=1.8, markersize=5, **st, **kw)


def _epoch_axis(ax):
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)


# ----------------------------------------------------------------------------- figures


def _cosine_panel(df: pd.DataFrame, runs: list, styler: _Styler):
    """A cosine over epochs per run: the whole-model value (mean over seeds) as a line, the
    middle half of the layers (25-75 %) as a band, and the zero line."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.axhline(0, color="0.4", linewidth=0.8, zorder=0)
    for run in runs:
        d = df[df["run"] == run]
        whole = _mean_over_seeds(d[d["layer"] == "all"], ["epoch"])
        layers = d[d["layer"] != "all"]
        st = styler.style(run)
        if not layers.empty:
            q = layers.groupby("epoch")["value"].quantile([0.25, 0.75]).unstack()
            ax.fill_between(q.index, q[0.25], q[0.75], color=st["color"], alpha=0.15, linewidth=0)
        _line(ax, whole["epoch"], whole["mean"], st, styler.label(run), len(whole))
    return fig, ax


def fig_cosine(tables: dict, roles: dict, styler: _Styler):
    """Fig. 1: cos(∇CE, ∇KL) over epochs, KD vs ZQ; band = middle half of the layers."""
    df = tables.get("cosine")
    if df is None:
        return None
    df = df[(df["metric"] == "cosine")]
    runs = _pick_runs(df, [roles["kd"], roles["zq"]])
    df = df[df["run"].isin(runs)]
    if df.empty:
        return None
    fig, ax = _cosine_panel(df, runs, styler)
    ax.set_ylabel("cos(∇CE, ∇KL)")
    ax.set_title("CE and KL gradients: aligned (>0) or fighting (≤0)?")
    _epoch_axis(ax)
    ax.legend(fontsize=8, title="line: whole model; band: layers' 25–75 %", title_fontsize=7)
    return fig, df


def fig_trace(tables: dict, roles: dict, styler: _Styler):
    """Fig. 2: Hessian trace over epochs, CE vs KL, one panel per regime; ±2 stderr bars."""
    df = tables.get("trace")
    if df is None:
        return None
    df = df[(df["metric"] == "trace") & (df["layer"] == "all")]
    runs = _pick_runs(df, [roles["kd"], roles["zq"]])
    df = df[df["run"].isin(runs)]
    if df.empty:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), sharey=True, squeeze=False)
    positive = bool((df["value"] > 0).all())
    for ax, run in zip(axes[0], runs):
        d = df[df["run"] == run]
        for loss in sorted(d["loss"].unique(), key=lambda l: (l != "ce", l)):
            dl = d[d["loss"] == loss].groupby("epoch").agg(value=("value", "mean"), stderr=("stderr", "mean"))
            st = LOSS_STYLES.get(loss, _FALLBACK_STYLES[0])
            ax.errorbar(dl.index, dl["value"], yerr=2 * dl["stderr"].fillna(0), capsize=3,
                        label=LOSS_LABELS.get(loss, loss), linewidth=1.8, markersize=5, **st)
        ax.set_title(styler.label(run), fontsize=10)
        _epoch_axis(ax)
        if positive:
            ax.set_yscale("log")
    axes[0][0].set_ylabel("Hessian trace (Hutchinson, ±2 s.e.)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Curvature of each loss: smaller trace = flatter", fontsize=11)
    fig.tight_layout()
    return fig, df


def fig_slices(tables: dict, roles: dict, styler: _Styler):
    """Fig. 3: L(θ + k·e·ĝ) − L(θ) along each loss's top eigenvector, a grid of epochs."""
    df = tables.get("eigen")
    if df is None:
        return None
    sl = df[df["metric"] == "slice_loss"].copy()
    runs = _pick_runs(sl, [roles["zq"], roles["kd"]])
    sl = sl[sl["run"].isin(runs)]
    if sl.empty:
        return None
    epochs = sorted(sl["epoch"].unique())[:6]
    sl = sl[sl["epoch"].isin(epochs)]
    lam = df[(df["metric"] == "top_eigenvalue") & df["run"].isin(runs) & df["epoch"].isin(epochs)]
    fig, axes = plt.subplots(len(runs), len(epochs), figsize=(2.6 * len(epochs) + 0.6, 2.4 * len(runs) + 0.5),
                             sharex=True, sharey=False, squeeze=False)
    shown = []
    for i, run in enumerate(runs):
        for j, epoch in enumerate(epochs):
            ax = axes[i][j]
            d = sl[(sl["run"] == run) & (sl["epoch"] == epoch)]
            ax.axvline(0, color="0.6", linewidth=0.6, zorder=0)
            notes = []
            for loss in sorted(d["loss"].unique(), key=lambda l: (l != "ce", l)):
                dl = d[d["loss"] == loss].groupby("k", as_index=False)["value"].mean().sort_values("k")
                base = np.interp(0.0, dl["k"], dl["value"])
                dl["delta"] = dl["value"] - base
                shown.append(dl.assign(run=run, epoch=epoch, loss=loss))
                _line(ax, dl["k"], dl["delta"], LOSS_STYLES.get(loss, _FALLBACK_STYLES[0]),
                      LOSS_LABELS.get(loss, loss), len(dl))
                lv = lam[(lam["run"] == run) & (lam["epoch"] == epoch) & (lam["loss"] == loss)]["value"]
                if len(lv):
                    notes.append(f"λ{LOSS_LABELS.get(loss, loss)}={lv.mean():.3g}")
            if notes:
                ax.text(0.03, 0.97, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="top")
            if i == 0:
                ax.set_title(f"epoch {int(epoch)}", fontsize=9)
            if i == len(runs) - 1:
                ax.set_xlabel("k")
            if j == 0:
                ax.set_ylabel(f"{styler.label(run)}\nL(θ+k·e·ĝ) − L(θ)", fontsize=8)
            ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper right")
    fig.suptitle("1-D loss surface along each loss's top Hessian eigenvector (flatter = better)", fontsize=10)
    fig.tight_layout()
    data = pd.concat(shown, ignore_index=True) if shown else sl
    return fig, data


def fig_density(tables: dict, roles: dict, styler: _Styler):
    """Fig. 4: SLQ eigenvalue density, CE vs KL; symmetric-log eigenvalue axis, log density."""
    df = tables.get("density")
    if df is None:
        return None
    d = df[df["metric"] == "density"]
    runs = _pick_runs(d, [roles["kd"], roles["zq"]])
    d = d[d["run"].isin(runs)]
    if d.empty:
        return None
    last = d.groupby("run")["epoch"].transform("max")
    d = d[d["epoch"] == last]
    fig, axes = plt.subplots(1, len(runs), figsize=(4.4 * len(runs), 3.6), squeeze=False)
    span = float(np.nanmax(np.abs(d["x"]))) if len(d) else 1.0
    for ax, run in zip(axes[0], runs):
        dr = d[d["run"] == run]
        for loss in sorted(dr["loss"].unique(), key=lambda l: (l != "ce", l)):
            dl = dr[dr["loss"] == loss].groupby("x", as_index=False)["value"].mean().sort_values("x")
            y = dl["value"].clip(lower=max(dl["value"].max(), 1e-300) * 1e-8)
            _line(ax, dl["x"], y, LOSS_STYLES.get(loss, _FALLBACK_STYLES[0]), LOSS_LABELS.get(loss, loss),
                  len(dl))
        _symlog_x(ax, span, float(dr["x"].min()), float(dr["x"].max()))
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue")
        ax.set_title(f"{styler.label(run)}, epoch {int(dr['epoch'].max())}", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("density (SLQ, Gaussian-smoothed)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Hessian eigenvalue density: a long tail of large eigenvalues = sharp", fontsize=10)
    fig.tight_layout()
    return fig, d


def _symlog_x(ax, span: float, lo: float, hi: float) -> None:
    """Symmetric-log eigenvalue axis with sparse, non-overlapping decade ticks."""
    linthresh = max(span * 1e-2, 1e-12)
    ax.set_xscale("symlog", linthresh=linthresh)
    top = math.floor(math.log10(max(span, 1e-12)))
    decades = [10.0 ** k for k in range(math.ceil(math.log10(linthresh)), top + 1)]
    ticks = [0.0] + [d for d in decades if d <= hi] + [-d for d in decades if -d >= lo]
    ax.set_xticks(sorted(ticks))
    ax.set_xticklabels(["0" if t == 0 else f"{t:.0e}".replace("e+0", "e").replace("e-0", "e-") for t in sorted(ticks)],
                       fontsize=7)
    ax.set_xlim(lo - 0.02 * span, hi + 0.02 * span)


def fig_interepoch(tables: dict, roles: dict, styler: _Styler):
    """Fig. 5: cosine of the mean KL gradient with the previous epoch's, KL-only vs AIT."""
    df = tables.get("interepoch")
    if df is None:
        return None
    df = df[df["metric"] == "interepoch_cosine"]
    runs = _pick_runs(df, [roles["kl_only"], roles["ait"], roles["kd"]])
    df = df[df["run"].isin(runs)]
    if df.empty:
        return None
    fig, ax = _cosine_panel(df, runs, styler)
    ax.set_ylabel("cos(ḡ_KL(t), ḡ_KL(t−1))")
    ax.set_title("Does the KL gradient keep its direction? (high = no minimum reached)", fontsize=10)
    _epoch_axis(ax)
    ax.legend(fontsize=8, title="line: whole model; band: layers' 25–75 %", title_fontsize=7)
    return fig, df


def fig_crossings(tables: dict, roles: dict, styler: _Styler):
    """Fig. 6: fraction of weights crossing a rounding threshold, layer × epoch, KL-only vs AIT."""
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
        layer_order = list(dict.fromkeys(d["layer"]))
        grids[run] = d.pivot_table(index="layer", columns="epoch", values="value", aggfunc="mean").reindex(layer_order)
    vals = pd.concat([g.stack() for g in grids.values()])
    pos = vals[vals > 0]
    vmin = float(pos.min()) if len(pos) else 1e-6
    vmax = float(pos.max()) if len(pos) else 1.0
    vmax = max(vmax, vmin * 10)
    n_layers = max(len(g) for g in grids.values())
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs) + 1.0, 0.28 * n_layers + 1.8), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("cividis").with_extremes(bad="#FFFFFF")
    im = None
    for ax, run in zip(axes[0], runs):
        g = grids[run]
        arr = np.ma.masked_where(~(g.to_numpy(dtype=float) > 0), g.to_numpy(dtype=float))
        im = ax.imshow(arr, aspect="auto", cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax), interpolation="nearest")
        ax.set_yticks(range(len(g.index)))
        ax.set_yticklabels(g.index, fontsize=7)
        cols = list(g.columns)
        step = max(1, len(cols) // 10)
        ax.set_xticks(range(0, len(cols), step))
        ax.set_xticklabels([int(c) for c in cols[::step]], fontsize=7)
        ax.set_xlabel("epoch")
        ax.set_title(styler.label(run), fontsize=10)
    cb = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9)
    what = "mean per-step fraction" if metric == "step_crossing_fraction" else "fraction since previous epoch"
    cb.set_label(f"weights changing integer code\n({what}; white = none)", fontsize=8)
    fig.suptitle("Rounding-threshold crossings per layer", fontsize=10)
    return fig, df


def fig_accuracy(tables: dict, roles: dict, styler: _Styler):
    """Fig. 7: student test accuracy over epochs; PTQ as a horizontal reference."""
    df = tables.get("training")
    if df is None:
        return None
    acc_metric = next((m for m in ("test_acc", "test_accuracy", "acc") if (df["metric"] == m).any()), None)
    if acc_metric is None:
        return None
    df = df[df["metric"] == acc_metric]
    runs = _pick_runs(df, list(roles["accuracy"]))
    df = df[df["run"].isin(runs)]
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    scale = 100.0 if df["value"].max() <= 1.0 else 1.0
    for run in runs:
        d = _mean_over_seeds(df[df["run"] == run], ["epoch"])
        st = styler.style(run)
        label = styler.label(run)
        if len(d) == 1 or run == roles.get("ptq"):
            ax.axhline(d["mean"].iloc[-1] * scale, label=label, color=st["color"], linestyle=st["linestyle"] or ":",
                       linewidth=1.5)
            continue
        _line(ax, d["epoch"], d["mean"] * scale, st, label, len(d))
        if (d["count"] > 1).any():
            sd = d["std"].fillna(0) * scale
            ax.fill_between(d["epoch"], d["mean"] * scale - sd, d["mean"] * scale + sd, color=st["color"],
                            alpha=0.15, linewidth=0)
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title("Quantized student accuracy", fontsize=10)
    _epoch_axis(ax)
    ax.legend(fontsize=8)
    return fig, df


_DRAWERS: dict[str, Callable] = {
    "fig1_cosine": fig_cosine, "fig2_trace": fig_trace, "fig3_slices": fig_slices,
    "fig4_density": fig_density, "fig5_interepoch": fig_interepoch, "fig6_crossings": fig_crossings,
    "fig7_accuracy": fig_accuracy,
}
_TABLES = ("cosine", "trace", "eigen", "density", "interepoch", "crossings", "training")


def plot_all(tables_dir="figures/tables", out_dir="figures", roles: Mapping | None = None) -> list[Path]:
    """Draw every figure whose table is there; returns the PNG paths (PDF and CSV beside each).

    A figure whose table is missing or empty is skipped with a warning; no table at all is an
    error naming the folder.
    """
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    roles = resolve_roles(roles)
    if not tables_dir.is_dir():
        raise FigureError(f"no tables folder {str(tables_dir)!r}: run `landscape analyze RUN_DIR...` "
                          "or `make figures` first")
    tables = {n: read_table(tables_dir, n) for n in _TABLES}
    tables = {n: t for n, t in tables.items() if t is not None}
    if not tables:
        raise FigureError(f"no tables in {str(tables_dir)!r} (expected {', '.join(t + '.csv' for t in _TABLES)}): "
                          "run `landscape analyze RUN_DIR...` first")
    styler = _Styler(roles)
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
