"""Figures read only the tidy CSV tables: drawn here from synthetic tables (no training)."""

from __future__ import annotations


import pandas as pd
import pytest

from landscape.figures import FIGURES, FigureError, plot_all
from landscape.tables import TableError, resolve_roles

from synthetic_tables import write_synthetic_tables  # noqa: E402


def test_plot_all_draws_seven_figures_with_csv_beside(tmp_path):
    tables = write_synthetic_tables(tmp_path / "tables")
    paths = plot_all(tables, tmp_path / "figs")
    assert [p.stem for p in paths] == list(FIGURES)
    for p in paths:
        assert p.suffix == ".png" and p.stat().st_size > 5_000
        assert p.with_suffix(".pdf").stat().st_size > 1_000
        csv = pd.read_csv(p.with_suffix(".csv"))
        assert len(csv) > 0


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


def test_three_seeds_draw_a_band_over_seeds_in_the_slice_and_density_figures(tmp_path):
    """Figs. 3 and 4 show the mean over seeds shaded from the lowest to the highest seed: the
    density CSV carries that envelope, its mean is the mean of the seeds' curves, and Fig. 3's
    panels hold the shaded areas."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from landscape.figures import _Runs, fig_density, fig_slices
    from landscape.tables import read_table
    from synthetic_tables import make_tables, write_tables

    t = make_tables(seeds=(0, 1, 2))
    d = t["density"].copy()
    d.loc[(d["metric"] == "ritz") & (d["seed"] == 1), "x"] *= 1.5   # seed 1's spectrum is wider
    t["density"] = d
    tables_dir = write_tables(tmp_path / "t", t)
    roles = resolve_roles(None)
    tables = {n: read_table(tables_dir, n) for n in ("eigen", "density")}

    fig, curves = fig_density(tables, roles, _Runs(roles))
    plt.close(fig)
    assert (curves["density_min"] <= curves["density"] + 1e-15).all()
    assert (curves["density"] <= curves["density_max"] + 1e-15).all()
    assert (curves["density_max"] - curves["density_min"]).max() > 0.1 * curves["density"].max()
    # one seed alone: no envelope, the same curve as its own density
    one = {n: tables[n][tables[n]["seed"] == 0] for n in tables}
    fig, alone = fig_density(one, roles, _Runs(roles))
    plt.close(fig)
    assert (alone["density_min"] == alone["density_max"]).all()

    fig, _ = fig_slices(tables, roles, _Runs(roles))
    shaded = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    plt.close(fig)
    assert len(shaded) >= len(fig.axes)   # every panel: at least one band (CE/KL × re-quantized/frozen)
