"""The figures of ``landscape compare``, drawn from its tidy tables only (house style of
:mod:`landscape.figures`: PNG + PDF with the CSV of the rows shown beside each; CE red, KL blue;
Okabe-Ito colours, and a marker and line style per quantizer for greyscale printers).

    compare_curvature     trace and top eigenvalue (CE, KL; whole model) against bits, a line per
                          quantizer, mean over seeds with a 95 % bootstrap band
    compare_sensitivity   measured CE loss increase of quantizing one layer alone: layer × bits, per quantizer
    compare_prediction    predicted (½δᵀHδ, and the trace proxy) against measured, per layer, with ρ
    compare_mixed         test accuracy against average bits: guided, reversed, random and uniform allocations
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from landscape.compare.claims import allocation_metric
from landscape.figures import LOSS_COLORS, LOSS_LABELS, SEED_BAND, _save, plt, sns
from matplotlib.colors import SymLogNorm

__all__ = ["COMPARE_FIGURES", "plot_compare", "CAPTIONS"]

COMPARE_FIGURES = ("compare_curvature", "compare_sensitivity", "compare_prediction", "compare_mixed")
_STYLES = [("#000000", "", "o"), ("#E69F00", (4, 2), "^"), ("#56B4E9", (6, 2, 1, 2), "s"),
           ("#009E73", (1, 1), "D"), ("#CC79A7", (5, 1), "v"), ("#999999", (3, 1, 1, 1), "X")]
STRATEGY_STYLES = {"guided": ("#009E73", "-", "o"), "reversed": ("#D55E00", "--", "v"),
                   "uniform": ("#000000", "", "s"), "random": ("#999999", "", ".")}
CAPTIONS = {
    "compare_curvature": "Whole-model Hessian trace (Hutchinson) and top eigenvalue (power iteration) of the quantized "
                         "student, CE (red titles) and KL to the teacher (blue titles), against bit width; a line per "
                         "quantizer, mean over seeds, band: 95 % bootstrap interval over seeds.",
    "compare_sensitivity": "Measured CE loss increase when one layer alone computes with the quantizer's forward weight "
                           "(activations in float), layer × bits, mean over seeds; negative cells: the float model is "
                           "not at a CE minimum and rounding happened to lower the loss.",
    "compare_prediction": "Predicted against measured per-layer CE loss increase: ½ δᵀH δ (circles) and the HAWQ-V2 "
                          "trace proxy ½·mean(δ²)·tr H (squares), every layer, bit width and seed; symmetric-log "
                          "axes, the diagonal is a perfect prediction; ρ: Spearman with its 95 % interval.",
    "compare_mixed": "Weight-only mixed precision: test accuracy against average bits per weight for the allocation "
                     "guided by ½ δᵀH δ, the reversed order, random orders (grey dots) and uniform bits (squares); "
                     "mean over seeds; dashed: the float teacher.",
}


def _quantizer_kwargs(quantizers: list[str]) -> dict:
    styles = {q: _STYLES[i % len(_STYLES)] for i, q in enumerate(quantizers)}
    return dict(hue="quantizer", style="quantizer", hue_order=quantizers, style_order=quantizers,
                palette={q: s[0] for q, s in styles.items()}, dashes={q: s[1] for q, s in styles.items()},
                markers={q: s[2] for q, s in styles.items()})


def _bits_axis(ax, bits) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(bits))
    ax.set_xticklabels([str(b) for b in sorted(bits)])
    ax.minorticks_off()
    ax.set_xlabel("bits")
    ax.grid(True, alpha=0.3)


def fig_curvature(tables: dict):
    df = tables["curvature"]
    df = df[df["metric"].isin(["trace", "lambda_max"]) & df["loss"].isin(["ce", "kl"])].copy()
    if df.empty:
        return None
    quantizers = list(dict.fromkeys(df["quantizer"]))
    losses = [l for l in ("ce", "kl") if l in set(df["loss"])]  # a language model has CE only
    fig, axes = plt.subplots(len(losses), 2, figsize=(8.5, 3.1 * len(losses) + 0.2), sharex=True, squeeze=False)
    titles = {"trace": "Hessian trace", "lambda_max": "top eigenvalue λ_max"}
    for i, loss in enumerate(losses):
        for j, metric in enumerate(("trace", "lambda_max")):
            ax, part = axes[i, j], df[(df["loss"] == loss) & (df["metric"] == metric)]
            sns.lineplot(data=part, x="bits", y="value", ax=ax, linewidth=1.6, **_quantizer_kwargs(quantizers),
                         **SEED_BAND, legend=(i == 0 and j == 1))
            ax.set_yscale("log")
            ax.set_title(f"{LOSS_LABELS[loss]}: {titles[metric]}", color=LOSS_COLORS[loss])
            ax.set_ylabel(titles[metric])
            _bits_axis(ax, df["bits"].unique())
    if axes[0, 1].get_legend() is not None:
        axes[0, 1].legend(fontsize=8, title="quantizer", title_fontsize=7)
    fig.tight_layout()
    return fig, df


def fig_sensitivity(tables: dict, loss: str = "ce"):
    df = tables["sensitivity"]
    df = df[df["loss"] == loss]
    if df.empty:
        return None
    quantizers = list(dict.fromkeys(df["quantizer"]))
    layers = list(dict.fromkeys(df["layer"]))
    mean = df.groupby(["quantizer", "layer", "bits"], sort=False)["measured"].mean().reset_index()
    span = float(mean["measured"].abs().max()) or 1.0
    norm = SymLogNorm(linthresh=max(span * 1e-3, 1e-12), vmin=-span, vmax=span, base=10)
    fig, axes = plt.subplots(1, len(quantizers), figsize=(2.6 * len(quantizers) + 1.2, 0.45 * len(layers) + 2.0),
                             squeeze=False, sharey=True)
    for k, (ax, q) in enumerate(zip(axes[0], quantizers)):
        grid = mean[mean["quantizer"] == q].pivot(index="layer", columns="bits", values="measured")
        grid = grid.reindex(index=layers, columns=sorted(grid.columns, reverse=True))
        sns.heatmap(grid, ax=ax, cmap="vlag", norm=norm, annot=True, fmt=".1e", annot_kws={"fontsize": 6},
                    cbar=k == len(quantizers) - 1, cbar_kws={"label": f"measured Δ{LOSS_LABELS[loss]}"})
        ax.set_title(q)
        ax.set_xlabel("bits")
        ax.set_ylabel("layer" if k == 0 else "")
    fig.tight_layout()
    return fig, mean.assign(loss=loss)


def fig_prediction(tables: dict, spearman: pd.DataFrame, loss: str = "ce"):
    df = tables["sensitivity"]
    df = df[df["loss"] == loss]
    if df.empty:
        return None
    quantizers = list(dict.fromkeys(df["quantizer"]))
    fig, axes = plt.subplots(1, len(quantizers), figsize=(3.1 * len(quantizers), 3.4), squeeze=False)
    span = float(np.nanmax(np.abs(df[["measured", "second_order", "trace_proxy"]].to_numpy()))) * 1.5 or 1.0
    lin = max(span * 1e-4, 1e-12)
    for ax, q in zip(axes[0], quantizers):
        part = df[df["quantizer"] == q]
        for col, marker, color in (("second_order", "o", LOSS_COLORS["ce"]), ("trace_proxy", "s", "#999999")):
            ax.scatter(part[col], part["measured"], marker=marker, s=18, facecolors="none" if col != "second_order"
                       else color, edgecolors=color, linewidths=0.9, label=col.replace("_", " "))
        ax.plot([-span, span], [-span, span], color="#000000", linewidth=0.8, linestyle=":")
        ax.set_xscale("symlog", linthresh=lin)
        ax.set_yscale("symlog", linthresh=lin)
        ax.set_xlim(-lin, span)
        ax.set_ylim(-span, span)
        rho = spearman[(spearman["quantizer"] == q) & (spearman["loss"] == loss)].set_index("predictor")
        text = "\n".join(f"ρ({p.replace('_', ' ')}) = {rho.loc[p, 'rho']:.2f} [{rho.loc[p, 'low']:.2f}, "
                         f"{rho.loc[p, 'high']:.2f}]" for p in ("second_order", "trace_proxy") if p in rho.index)
        ax.set_title(q)
        ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=7)
        ax.set_xlabel(f"predicted Δ{LOSS_LABELS[loss]}")
        ax.set_ylabel(f"measured Δ{LOSS_LABELS[loss]}")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    cols = ["quantizer", "bits", "seed", "layer", "n_params", "measured", "second_order", "taylor", "trace_proxy",
            "trace_proxy_stderr"]
    return fig, df[cols].assign(loss=loss)


def fig_mixed(tables: dict, teacher_acc: float | None = None):
    df = tables["allocation"]
    if df.empty:
        return None
    metric = allocation_metric(df)  # accuracy (images) or val_loss (language models)
    quantizers = list(dict.fromkeys(df["quantizer"]))
    fig, axes = plt.subplots(1, len(quantizers), figsize=(3.1 * len(quantizers), 3.4), squeeze=False, sharey=True)
    for ax, q in zip(axes[0], quantizers):
        part = df[df["quantizer"] == q]
        rnd = part[part["strategy"] == "random"]
        ax.scatter(rnd["avg_bits"], rnd[metric], s=6, color=STRATEGY_STYLES["random"][0], alpha=0.5,
                   label="random order")
        for strategy in ("reversed", "guided"):
            s = part[part["strategy"] == strategy].groupby("budget")[["avg_bits", metric]].mean()
            color, ls, marker = STRATEGY_STYLES[strategy]
            ax.plot(s["avg_bits"], s[metric], color=color, linestyle=ls, marker=marker, markersize=4,
                    label="guided (½δᵀHδ)" if strategy == "guided" else "reversed order")
        uni = part[part["strategy"] == "uniform"].groupby("budget")[["avg_bits", metric]].mean()
        ax.scatter(uni["avg_bits"], uni[metric], marker="s", s=28, color="#000000", label="uniform bits", zorder=5)
        if teacher_acc is not None:
            ax.axhline(teacher_acc, color="#000000", linestyle="--", linewidth=0.8,
                       label="float teacher" if metric == "accuracy" else "float model")
        ax.set_title(q)
        ax.set_xlabel("average bits per weight")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)" if metric == "accuracy" else "validation loss (nats/token)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig, df


def plot_compare(tables: dict, spearman: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Draw the four figures into ``out_dir``; returns the PNG paths (PDF and CSV beside each)."""
    out_dir = Path(out_dir)
    curv = tables["curvature"]
    teacher = curv[(curv["quantizer"] == "float") & curv["metric"].isin(["accuracy", "val_loss"])]["value"]
    teacher_acc = float(teacher.mean()) if len(teacher) else None
    tables = {**tables, "curvature": curv[curv["quantizer"] != "float"]}
    drawers = {"compare_curvature": lambda: fig_curvature(tables),
               "compare_sensitivity": lambda: fig_sensitivity(tables),
               "compare_prediction": lambda: fig_prediction(tables, spearman),
               "compare_mixed": lambda: fig_mixed(tables, teacher_acc)}
    paths = []
    with plt.rc_context({"font.size": 9, "axes.titlesize": 10, "legend.frameon": False,
                         "pdf.fonttype": 42, "svg.fonttype": "none"}):
        for stem, draw in drawers.items():
            made = draw()
            if made is None:
                warnings.warn(f"{stem}: skipped, its table has no rows")
                continue
            fig, data = made
            paths.append(_save(fig, out_dir, stem, data))
    return paths
