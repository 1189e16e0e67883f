"""The console script: each bad input ends in one line naming the problem, exit status 2."""

from __future__ import annotations

import pytest

from landscape.cli import build_parser, main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    first = [line for line in err if line.startswith("landscape:")]
    assert len(first) == 1, err
    assert "Traceback" not in "\n".join(err)
    return first[0]


def test_missing_recipe_is_named(capsys):
    assert main(["train", "no-such-recipe.toml"]) == 2
    assert "no-such-recipe.toml" in _one_error_line(capsys)


def test_recipe_typo_suggests_the_closest_key(tmp_path, capsys):
    recipe = tmp_path / "typo.toml"
    recipe.write_text('name = "typo"\n[data]\nnmae = "digits"\n')
    assert main(["train", str(recipe)]) == 2
    line = _one_error_line(capsys)
    assert "nmae" in line and "name" in line


def test_missing_run_folder_is_named(tmp_path, capsys):
    missing = tmp_path / "no-run"
    assert main(["analyze", str(missing)]) == 2
    assert "no-run" in _one_error_line(capsys)


def test_debug_shows_the_traceback():
    with pytest.raises(Exception, match="no-such-recipe"):
        main(["--debug", "train", "no-such-recipe.toml"])


def test_every_subcommand_parses():
    parser = build_parser()
    assert parser.parse_args(["train", "r.toml", "--runs", "kd", "ait", "--epochs", "3"]).runs == ["kd", "ait"]
    assert parser.parse_args(["analyze", "a", "b", "--analyses", "trace"]).run_dirs == ["a", "b"]
    assert parser.parse_args(["plot"]).tables == "figures/tables"
    assert parser.parse_args(["figures"]).recipe == "analyses/default.toml"
