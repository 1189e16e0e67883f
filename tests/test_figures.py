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
