"""The console script: each bad input ends in one line naming the problem, exit status 2."""

from __future__ import annotations

import os

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


def test_debug_is_accepted_anywhere_on_the_line():
    with pytest.raises(Exception, match="no-such-recipe"):
        main(["train", "no-such-recipe.toml", "--debug"])


def test_version_and_python_dash_m(capsys):
    import subprocess
    import sys
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"landscape {version('landscape')}"
    proc = subprocess.run([sys.executable, "-m", "landscape", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("landscape ")


def test_one_version_everywhere():
    """landscape.__version__, setup.cfg (the installed metadata) and the CHANGELOG's newest entry agree."""
    import configparser
    import re
    from pathlib import Path

    import landscape

    root = Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    newest = re.search(r"^## (?!Unreleased)(\S+)", (root / "CHANGELOG.md").read_text(), re.M).group(1)
    assert landscape.__version__ == cfg["metadata"]["version"] == newest


def test_a_misspelt_command_gets_the_closest_one(capsys):
    assert main(["analyse", "x"]) == 2
    line = _one_error_line(capsys)
    assert "unknown command 'analyse'" in line and "did you mean 'analyze'" in line


def test_every_option_says_its_default_or_has_none(capsys):
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.dest in ("help", "debug") or action.required:
                continue  # a required argument (RECIPE, RUN_DIR...) has no default
            assert action.help, (name, action.dest)
            text = sub.formatter_class(name)._get_help_string(action)
            # a switch's default is 'off'; every other option says what it is when not given
            assert "default" in text or action.default is False, (name, action.dest, text)


def test_report_prints_best_and_final(tmp_path, capsys):
    from landscape.zsq.tables import METRICS_COLUMNS, append_rows

    run = tmp_path / "kd-seed0"
    run.mkdir()
    rows = [{c: 0.0 for c in METRICS_COLUMNS} | {"epoch": e, "phase": "train", "test_acc": a, "best_acc": b,
                                                  "teacher_acc": 97.0, "effective_batch": 32}
            for e, a, b in ((1, 90.0, 90.0), (2, 88.0, 90.0))]
    append_rows(run / "metrics.csv", rows, METRICS_COLUMNS)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "90.00" in out and "88.00" in out


def test_analyze_takes_a_settings_file(tmp_path, capsys):
    bad = tmp_path / "s.toml"
    bad.write_text("[analysis.trace]\nmax_matvec = 3\n")
    (tmp_path / "run").mkdir()
    assert main(["analyze", str(tmp_path / "run"), "--settings", str(bad)]) == 2
    assert "did you mean 'max_matvecs'" in _one_error_line(capsys)
    assert main(["analyze", str(tmp_path / "run"), "--settings", str(tmp_path / "none.toml")]) == 2
    assert "none.toml" in _one_error_line(capsys)


def test_data_parallel_selects_the_data_mode_of_the_distributed_analysis(tmp_path, monkeypatch, capsys):
    """``analyze --data-parallel`` is the documented switch to ``LANDSCAPE_ANALYZE_MODE=data`` (each
    checkpoint on all ranks; tested under two ranks in test_distributed_analyze)."""
    import landscape.analyzers as analyzers
    from landscape.analyzers.distributed import ENV_MODE
    from landscape.analyzers.runner import AnalysisTables

    seen = {}

    def fake(*a, **k):
        seen["mode"] = os.environ.get(ENV_MODE)
        return AnalysisTables()

    monkeypatch.delenv(ENV_MODE, raising=False)
    monkeypatch.setattr(analyzers, "analyze_runs", fake)
    (tmp_path / "run").mkdir()
    main(["analyze", str(tmp_path / "run"), "--data-parallel", "--keep-going"])
    assert seen == {"mode": "data"}
    monkeypatch.delenv(ENV_MODE, raising=False)
    main(["analyze", str(tmp_path / "run"), "--keep-going"])
    assert seen == {"mode": None}


def test_figures_takes_the_checkpoint_folder_seeds_and_jobs():
    args = build_parser().parse_args(["figures", "r.toml", "--checkpoints", "ck", "--seeds", "0", "1", "--jobs", "1"])
    assert (args.checkpoints, args.seeds, args.jobs) == ("ck", [0, 1], 1)
