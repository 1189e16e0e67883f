"""The `make figures` job end to end on a tiny recipe (digits, two epochs, all five runs)."""

from __future__ import annotations

import time

import pytest

from landscape.kernels import current as kernels_mode

from landscape.figures import FIGURES
from landscape.findings import LEVELS, claims, claims_table
from landscape.pipeline import pipeline_settings, run_figures
from landscape.results import BLOCKS, publish_results, read_blocks
from tiny_runs import TINY_PIPELINE

TINY = TINY_PIPELINE.read_text()  # the suite's one tiny pipeline recipe (tests/fixtures/)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    (root / "tiny.toml").write_text(TINY)
    import os

    old = os.getcwd()
    os.chdir(root)
    try:
        t0 = time.perf_counter()
        run_figures("tiny.toml", device="cpu", out="figs")
        elapsed = time.perf_counter() - t0
    finally:
        os.chdir(old)
    return root, elapsed


def test_make_figures_writes_every_figure_and_the_findings(first_run):
    root, _ = first_run
    figs = root / "figs"
    for stem in FIGURES:
        for ext in (".png", ".pdf", ".csv"):
            assert (figs / f"{stem}{ext}").stat().st_size > 0, stem + ext
    readme = (figs / "README.md").read_text()
    assert "| # | The paper's claim | Our number (95 % interval) | Verdict (raw, as the paper) | Scale-free verdict |" \
        in readme
    for stem in FIGURES:
        assert f"![{stem}]({stem}.png)" in readme
    # every claim of METHOD.md §2 (1-6) and the headline (7) has a verdict; 2-4 a scale-free one too
    rows = claims(figs / "tables")
    assert [r["id"] for r in rows] == list(range(1, 8))
    assert all(r["verdict"] in LEVELS for r in rows)
    assert all((r["scale_free_verdict"] in LEVELS) == (r["id"] in (2, 3, 4)) for r in rows)
    for i in range(1, 8):
        assert f"\n| {i} | " in readme
    assert "torch threads per process 1" in readme  # provenance: what produced the numbers
    from importlib.metadata import version

    from landscape.kernels import cpu_isa, cpu_model
    assert f"kernels {kernels_mode()} (" in readme and f"cpu {cpu_model()} ({cpu_isa()})" in readme
    assert f"numpy {version('numpy')}, scipy {version('scipy')}" in readme  # every package's version
    assert (figs / "tables" / "training.csv").exists()
    blocks = read_blocks((figs / "results.md").read_text())
    assert {"provenance", "findings", "accuracy", "timings-cold"} <= set(blocks)
    assert blocks["findings"].strip() == claims_table(rows).strip()


def test_second_call_is_cached_and_prints_stage_times(first_run, monkeypatch, capsys):
    from landscape.curvature import Hessian

    root, _ = first_run
    calls = []
    original = Hessian._apply
    monkeypatch.setattr(Hessian, "_apply", lambda self, V: calls.append(1) or original(self, V))
    monkeypatch.chdir(root)
    run_figures("tiny.toml", device="cpu", out="figs", jobs=1)
    assert calls == []
    out = capsys.readouterr().out
    assert "time of each stage" in out and "warm: nothing to train or compute" in out
    for stage in ("train", "analyze", "plot", "findings", "total"):
        assert stage in out
    blocks = read_blocks((root / "figs" / "results.md").read_text())
    assert "timings-warm" in blocks and "timings-cold" not in blocks


def test_publish_copies_every_block_and_keeps_the_other_timings(first_run, tmp_path):
    root, _ = first_run
    readme = tmp_path / "README.md"
    markers = "".join(f"<!-- results:{b} -->\nold\n<!-- /results:{b} -->\n" for b in BLOCKS)
    readme.write_text("# Title\n\n" + markers + "tail\n")
    copy = tmp_path / "docs" / "results.md"
    copy.parent.mkdir()
    copy.write_text(markers)
    publish_results(root / "figs" / "results.md", readme, copy)
    new = read_blocks(readme.read_text())
    produced = read_blocks((root / "figs" / "results.md").read_text())
    for name, body in produced.items():
        assert new[name] == body and read_blocks(copy.read_text())[name] == body
    missing = set(BLOCKS) - set(produced)
    assert missing and all(new[m] == "old\n" for m in missing)  # the other run's block is kept
    assert readme.read_text().startswith("# Title") and readme.read_text().endswith("tail\n")


def test_bad_analysis_key_fails_before_training(tmp_path, monkeypatch):
    from landscape.analyzers import AnalysisError

    (tmp_path / "bad.toml").write_text(TINY.replace("max_matvecs = 6", "max_matvec = 6"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises((AnalysisError, ValueError), match="max_matvecs"):
        run_figures("bad.toml", device="cpu", out="figs")
    assert not (tmp_path / "checkpoints").exists()


def test_roles_choose_which_runs_each_analysis_visits():
    s = pipeline_settings({"trace": {"max_matvecs": 5}}, {"kd": "kd", "zq": "gdfq", "kl_only": "kl", "ait": "ait",
                                                          "ptq": "ptq", "accuracy": []})
    assert s["trace"] == {"runs": ["kd", "gdfq"], "max_matvecs": 5}
    assert s["density"]["curvature"] == ["hessian", "ggn"]  # the GGN panel of Fig. 4
    assert s["interepoch"]["runs"] == ["kl", "ait", "kd"]
    assert "ptq" not in s["crossings"]["runs"]
