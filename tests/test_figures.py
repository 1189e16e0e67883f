"""Figures read only the tidy CSV tables: drawn here from synthetic tables (no training)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landscape.figures import FIGURES, FigureError, plot_all
from landscape.tables import TableError, resolve_roles

COLS = ["run", "seed", "epoch", "loss", "layer", "metric", "value", "stderr", "n_matvecs"]
LAYERS = ["conv1", "conv2", "fc"]


def _row(run, epoch, loss, layer, metric, value, stderr=math.nan, n=0, **extra):
    return dict(run=run, seed=0, epoch=epoch, loss=loss, layer=layer, metric=metric, value=value,
                stderr=stderr, n_matvecs=n, **extra)


def write_synthetic_tables(d: Path, epochs=6) -> Path:
    """Tables shaped like the analyzers' output, with paper-like numbers."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    rows = {k: [] for k in ("cosine", "trace", "eigen", "density", "interepoch", "crossings")}
    for run, base in (("kd", 0.4), ("gdfq", -0.05)):
        for e in range(1, epochs + 1):
            rows["cosine"].append(_row(run, e, "ce|kl", "all", "cosine", base + 0.02 * rng.normal()))
            for layer in LAYERS:
                rows["cosine"].append(_row(run, e, "ce|kl", layer, "cosine", base + 0.1 * rng.normal()))
            for loss, tr in (("ce", 50.0), ("kl", 8.0)):
                rows["trace"].append(_row(run, e, loss, "all", "trace", tr * (1 + 0.1 * e), tr * 0.05, 30))
        for e in (1, 3, epochs):
            for loss, lam in (("ce", 20.0), ("kl", 3.0)):
                rows["eigen"].append(_row(run, e, loss, "all", "top_eigenvalue", lam, 0.01, 40))
                rows["eigen"].append(_row(run, e, loss, "all", "slice_scale", 0.1))
                for k in np.linspace(-0.5, 0.5, 21):
                    rows["eigen"].append(_row(run, e, loss, "all", "slice_loss", 1.0 + lam * k * k, k=k))
        for loss, scale in (("ce", 30.0), ("kl", 3.0)):
            xs = np.linspace(-2, scale, 100)
            for x in xs:
                rows["density"].append(_row(run, epochs, loss, "all", "density",
                                            float(np.exp(-abs(x) / scale * 5) / scale), n=60, x=x))
            for x in np.linspace(-1, scale, 10):
                rows["density"].append(_row(run, epochs, loss, "all", "ritz", 0.1, n=60, x=x))
    for run, base, frac in (("kl", 0.9, 1e-5), ("ait", 0.3, 1e-3), ("kd", 0.2, 1e-4)):
        for e in range(2, epochs + 1):
            rows["interepoch"].append(_row(run, e, "kl", "all", "interepoch_cosine", base, prev_epoch=e - 1))
            for layer in LAYERS:
                rows["interepoch"].append(_row(run, e, "kl", layer, "interepoch_cosine",
                                               base + 0.05 * rng.normal(), prev_epoch=e - 1))
        for e in range(1, epochs + 1):
            for i, layer in enumerate(LAYERS):
                v = 0.0 if (run == "kl" and i == 0) else frac * (1 + i)
                rows["crossings"].append(_row(run, e, "", layer, "step_crossing_fraction", v, v / 10))
    for name, r in rows.items():
        pd.DataFrame(r).to_csv(d / f"{name}.csv", index=False)
    tr = []
    for run, acc in (("kd", 0.95), ("gdfq", 0.80), ("kl", 0.83), ("ait", 0.86)):
        for e in range(1, epochs + 1):
            tr.append(dict(run=run, seed=0, epoch=e, metric="test_acc", value=acc - 0.1 / e))
    tr.append(dict(run="ptq", seed=0, epoch=0, metric="test_acc", value=0.6))
    pd.DataFrame(tr).to_csv(d / "training.csv", index=False)
    return d


def test_plot_all_draws_seven_figures_with_csv_beside(tmp_path):
    tables = write_synthetic_tables(tmp_path / "tables")
    t0 = time.perf_counter()
    paths = plot_all(tables, tmp_path / "figs")
    elapsed = time.perf_counter() - t0
    assert [p.stem for p in paths] == list(FIGURES)
    for p in paths:
        assert p.suffix == ".png" and p.stat().st_size > 5_000
        assert p.with_suffix(".pdf").stat().st_size > 1_000
        csv = pd.read_csv(p.with_suffix(".csv"))
        assert len(csv) > 0
    assert elapsed < 30  # "redraws in seconds"; generous for a loaded 2-core machine


def test_missing_tables_are_skipped_with_a_warning(tmp_path):
    tables = write_synthetic_tables(tmp_path / "tables")
    (tables / "density.csv").unlink()
    with pytest.warns(UserWarning, match="fig4_density"):
        paths = plot_all(tables, tmp_path / "figs")
    assert "fig4_density" not in [p.stem for p in paths] and len(paths) == 6


def test_no_tables_is_one_clear_error(tmp_path):
    with pytest.raises(FigureError, match="no tables folder"):
        plot_all(tmp_path / "nope", tmp_path / "figs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FigureError, match="landscape analyze"):
        plot_all(tmp_path / "empty", tmp_path / "figs")


def test_unknown_role_names_the_closest():
    with pytest.raises(TableError, match="did you mean 'kl_only'"):
        resolve_roles({"kl_onyl": "kl"})


def test_runs_with_other_names_are_still_drawn(tmp_path):
    """A user's own run names (no kd/gdfq) fall back to whatever runs the table has."""
    tables = write_synthetic_tables(tmp_path / "tables")
    for name in ("cosine", "trace"):
        df = pd.read_csv(tables / f"{name}.csv")
        df["run"] = df["run"].map({"kd": "mine-a", "gdfq": "mine-b"})
        df.to_csv(tables / f"{name}.csv", index=False)
    paths = plot_all(tables, tmp_path / "figs")
    data = pd.read_csv(tmp_path / "figs" / "fig1_cosine.csv")
    assert set(data["run"]) == {"mine-a", "mine-b"}
    assert len(paths) == 7
