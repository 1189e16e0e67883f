"""Synthetic tidy tables shaped like the analyzers' output (figures and findings tests).

The CE loss along its top eigenvector is modelled as f(t) = L0 + ½λt² + b·t⁴; the KL is
either an independent "paper-like" loss (flatter, smaller) or exactly ``c × CE`` (``kl_scale=c``):
then every quantity the analyzers report follows from that scaling — traces, λ, L and Ritz
values × c, ĝ × c, the paper's slice c·f(k·c·ĝ), the unit-step slice c·f(k).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

LAYERS = ["conv1", "conv2", "fc"]
KS = np.linspace(-0.5, 0.5, 21)


def _row(run, seed, epoch, loss, layer, metric, value, **extra):
    out = dict(run=run, seed=seed, epoch=epoch, loss=loss, layer=layer, metric=metric, value=value,
               stderr=math.nan, n_matvecs=0, converged=math.nan, residual=math.nan, probe_seed=math.nan)
    out.update(extra)
    return out


def make_tables(seeds=(0, 1, 2), epochs=6, kl_scale=None, zq_cos=-0.05, kd_cos=0.4, cos_noise=0.02,
                kl_only_inter=0.9, kd_inter=0.2, crossing=1e-5, runs=("kd", "gdfq", "kl", "ait", "ptq"),
                acc=None, seed=0) -> dict:
    """A dict ``{table: DataFrame}``; ``runs`` chooses which runs exist at all."""
    rng = np.random.default_rng(seed)
    acc = acc or {"kd": 95.0, "gdfq": 80.0, "kl": 83.0, "ait": 90.0}
    rows = {k: [] for k in ("cosine", "trace", "eigen", "density", "interepoch", "crossings")}
    training = []
    for s in seeds:
        for run, base in (("kd", kd_cos), ("gdfq", zq_cos)):
            if run not in runs:
                continue
            for e in range(1, epochs + 1):
                rows["cosine"].append(_row(run, s, e, "ce|kl", "all", "cosine", base + cos_noise * rng.normal()))
                for layer in LAYERS:
                    rows["cosine"].append(_row(run, s, e, "ce|kl", layer, "cosine", base + 0.1 * rng.normal()))
                tr_ce = 50.0 * (1 + 0.1 * e) * (1 + 0.05 * rng.normal())
                L_ce = 1.0 + 0.05 * rng.normal()
                c = kl_scale
                tr_kl = c * tr_ce if c else 8.0 * (1 + 0.1 * e) * (1 + 0.05 * rng.normal())
                L_kl = c * L_ce if c else 0.5 + 0.02 * rng.normal()
                for loss, tr, L in (("ce", tr_ce, L_ce), ("kl", tr_kl, L_kl)):
                    rows["trace"].append(_row(run, s, e, loss, "all", "trace", tr, stderr=0.03 * tr, n_matvecs=20,
                                              converged=True, probe_seed=1000 * s + e, curvature="hessian"))
                    rows["trace"].append(_row(run, s, e, loss, "all", "loss_value", L))
            for e in (1, epochs // 2, epochs):
                lam_ce = 20.0 * (1 + 0.05 * rng.normal())
                g_ce = 0.1
                L_ce = 1.0
                shapes = {"ce": (1.0, lam_ce, g_ce, L_ce)}
                if kl_scale:
                    shapes["kl"] = (kl_scale, lam_ce, g_ce, L_ce)  # (factor, λ of f, ĝ of f, L0 of f)
                for loss in ("ce", "kl"):
                    if loss in shapes:
                        c, lam, g, L0 = shapes[loss]
                        f = lambda t, lam=lam, L0=L0: L0 + 0.5 * lam * t ** 2 + 2.0 * t ** 4  # noqa: E731
                        step = c * g
                        paper = [c * f(k * step * 1.0) for k in KS]
                        unit = [c * f(k) for k in KS]
                        lam_loss, ghat, Lval = c * lam, c * g, c * L0
                    else:  # a flatter, smaller KL (late epochs flatter still)
                        lam_loss, ghat, Lval = 3.0 / (1 + 0.3 * e), 0.05, 0.5
                        paper = [Lval + 0.5 * lam_loss * (k * ghat) ** 2 for k in KS]
                        unit = [Lval + 0.5 * lam_loss * k ** 2 for k in KS]
                    rows["eigen"].append(_row(run, s, e, loss, "all", "top_eigenvalue", lam_loss, residual=0.01,
                                              converged=True, n_matvecs=20, curvature="hessian"))
                    rows["eigen"].append(_row(run, s, e, loss, "all", "slice_scale", ghat))
                    rows["eigen"].append(_row(run, s, e, loss, "all", "loss_value", Lval))
                    for kind, values in (("requantized", paper), ("frozen", paper), ("requantized_unit", unit)):
                        for k, v in zip(KS, values):
                            rows["eigen"].append(_row(run, s, e, loss, "all", "slice_loss", v, k=k, slice=kind))
            for curvature in ("hessian", "ggn"):
                top_ce = 30.0
                nodes_ce = [np.array([-1.0, 0.5, 2.0, 10.0, top_ce]) * (1 + 0.02 * p) for p in range(2)]
                weights = [np.array([0.1, 0.5, 0.2, 0.1, 0.1])] * 2
                if kl_scale:
                    nodes_kl = [n * kl_scale for n in nodes_ce]
                    w_kl = weights
                else:
                    nodes_kl = [np.array([-0.1, 0.1, 0.2, 0.5, 3.0]) * (1 + 0.02 * p) for p in range(2)]
                    w_kl = [np.array([0.1, 0.6, 0.2, 0.08, 0.02])] * 2
                for loss, nodes, ws in (("ce", nodes_ce, weights), ("kl", nodes_kl, w_kl)):
                    if curvature == "ggn":
                        nodes = [np.abs(n) for n in nodes]
                    scale = max(float(n.max()) for n in nodes)
                    for x in np.linspace(-scale / 10, scale, 60):
                        rows["density"].append(_row(run, s, epochs, loss, "all", "density",
                                                    float(np.exp(-abs(x) / scale * 5) / scale), n_matvecs=40, x=x,
                                                    curvature=curvature))
                    for p, (nd, w) in enumerate(zip(nodes, ws)):
                        for x, wt in zip(nd, w / 2):
                            rows["density"].append(_row(run, s, epochs, loss, "all", "ritz", float(wt), x=float(x),
                                                        probe=p, curvature=curvature))
        for run, base, frac in (("kl", kl_only_inter, crossing), ("ait", 0.3, 1e-3), ("kd", kd_inter, 1e-4)):
            if run not in runs:
                continue
            for e in range(2, epochs + 1):
                rows["interepoch"].append(_row(run, s, e, "train", "all", "interepoch_cosine",
                                               base + 0.02 * rng.normal(), prev_epoch=e - 1))
                rows["interepoch"].append(_row(run, s, e, "kl", "all", "interepoch_cosine_fixed_batches",
                                               0.99, prev_epoch=e - 1))
                for layer in LAYERS:
                    rows["interepoch"].append(_row(run, s, e, "train", layer, "interepoch_cosine",
                                                   base + 0.05 * rng.normal(), prev_epoch=e - 1))
            for e in range(1, epochs + 1):
                for i, layer in enumerate(LAYERS):
                    if run == "kl":  # only the last layer moves, at 3·frac: mean frac over layers
                        v = 0.0 if i < len(LAYERS) - 1 else 3 * frac * (1 + 0.1 * rng.normal())
                    else:
                        v = frac * (1 + i) * (1 + 0.1 * rng.normal())
                    rows["crossings"].append(_row(run, s, e, "", layer, "step_crossing_fraction", v, stderr=v / 10))
        for run, a in acc.items():
            if run not in runs:
                continue
            best = -1.0
            for e in range(1, epochs + 1):
                v = a - 10.0 / e + rng.normal()
                best = max(best, v)
                training += [dict(run=run, seed=s, epoch=e, metric="test_acc", value=v),
                             dict(run=run, seed=s, epoch=e, metric="best_acc", value=best),
                             dict(run=run, seed=s, epoch=e, metric="teacher_acc", value=97.0)]
        if "ptq" in runs:
            training.append(dict(run="ptq", seed=s, epoch=0, metric="test_acc", value=60.0))
    out = {name: pd.DataFrame(r) for name, r in rows.items()}
    out["training"] = pd.DataFrame(training)
    return out


def write_tables(d: Path, tables: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(d / f"{name}.csv", index=False)
    return d


def write_synthetic_tables(d: Path, epochs=6, seeds=(0,)) -> Path:
    """Paper-like tables (the figures' tests)."""
    return write_tables(Path(d), make_tables(seeds=seeds, epochs=epochs))
