"""The verdict rules, table-driven on synthetic tables whose answer is known by construction."""

from __future__ import annotations

import math

import pytest

from landscape.findings import NO_DATA, NOT_SUPPORTED, SUGGESTIVE, SUPPORTED, claims
from landscape.findings import claims as claims_fn  # noqa: F401 - the public name
from landscape.findings.rules import CLAIMS
from landscape.findings.readme import write_readme
from landscape.findings.stats import Interval, bootstrap, paired_t_interval
from landscape.findings.verdicts import judge

from synthetic_tables import make_tables, write_tables


def verdicts(tmp_path, **kw):
    d = write_tables(tmp_path / "t", make_tables(**kw))
    return {c["id"]: c for c in claims(d, firmness=False)}


def test_paper_like_tables_support_every_claim(tmp_path):
    got = verdicts(tmp_path)
    assert {i: c["verdict"] for i, c in got.items()} == {i: SUPPORTED for i in range(1, 8)}
    assert {i: got[i]["scale_free_verdict"] for i in (2, 3, 4)} == {2: SUPPORTED, 3: SUPPORTED, 4: SUPPORTED}
    assert all(got[i]["scale_free_verdict"] is None for i in (1, 5, 6, 7))
    assert "[" in got[2]["number"] and "×" in got[2]["number"]  # the interval is shown


@pytest.mark.parametrize("c", [0.05, 20.0])
def test_a_constant_factor_on_the_kl_never_moves_a_scale_free_verdict(tmp_path, c):
    """KL = c·CE exactly: the same curvature up to scale, so the scale-free verdicts are
    'not supported' for both c, while the raw ones follow the scale."""
    got = verdicts(tmp_path, kl_scale=c)
    assert {i: got[i]["scale_free_verdict"] for i in (2, 3, 4)} == {2: NOT_SUPPORTED, 3: NOT_SUPPORTED,
                                                                   4: NOT_SUPPORTED}
    assert got[2]["verdict"] == (SUPPORTED if c < 1 else NOT_SUPPORTED)
    if c < 1:
        assert any("disagree" in n for n in got[2]["notes"])


@pytest.mark.parametrize("missing, no_data", [("kd", {1, 5}), ("kl", {5, 6, 7}), ("ait", {7}), ("gdfq", {1, 2, 3, 4, 7})])
def test_a_missing_run_gives_no_data_for_what_needs_it(tmp_path, missing, no_data):
    runs = tuple(r for r in ("kd", "gdfq", "kl", "ait", "ptq") if r != missing)
    got = verdicts(tmp_path, runs=runs)
    assert {i for i, c in got.items() if c["verdict"] == NO_DATA} == no_data


def test_overlapping_intervals_are_suggestive_never_supported(tmp_path):
    got = verdicts(tmp_path, zq_cos=-0.02, kd_cos=0.0, cos_noise=0.3, seeds=(0, 1, 2))
    assert got[1]["verdict"] == SUGGESTIVE


def test_zq_above_kd_is_not_supported_whatever_its_level(tmp_path):
    """The old rule said 'partly' for ZQ 0.05 against KD 0.0: ZQ is not below KD."""
    got = verdicts(tmp_path, zq_cos=0.05, kd_cos=0.0, cos_noise=0.01)
    assert got[1]["verdict"] == NOT_SUPPORTED


def test_a_mean_of_zero_is_not_order_1e_5(tmp_path):
    assert verdicts(tmp_path, crossing=0.0)[6]["verdict"] == NOT_SUPPORTED
    assert verdicts(tmp_path, crossing=1e-2)[6]["verdict"] == NOT_SUPPORTED  # far above 1e-5


def test_one_seed_is_at_most_suggestive_for_accuracy(tmp_path):
    got = verdicts(tmp_path, seeds=(0,))
    assert got[7]["verdict"] == SUGGESTIVE
    assert "1 seed" in got[7]["number"] or "n = 1" in got[7]["number"]


def test_judge_and_intervals_by_hand():
    assert judge(Interval(0.5, 0.2, 0.8), 0.0, "above") == SUPPORTED
    assert judge(Interval(0.5, -0.2, 0.8), 0.0, "above") == SUGGESTIVE
    assert judge(Interval(0.5, math.nan, math.nan), 0.0, "above") == SUGGESTIVE
    assert judge(Interval(-0.1, -0.3, 0.1), 0.0, "above") == NOT_SUPPORTED
    assert judge(Interval(0.05, 0.0, 0.09), 0.1, "below") == SUPPORTED
    assert judge(None) == NO_DATA
    # t-interval by hand: d = 1, 2, 3 -> mean 2, s = 1, t(0.975, 2) = 4.302653
    t = paired_t_interval([1.0, 2.0, 3.0])
    assert (t.estimate, t.low, t.high) == pytest.approx((2.0, 2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)))
    # the bootstrap of a constant has a degenerate interval; of one seed with spread, a real one
    b = bootstrap({0: [1.0] * 5})
    assert (b.estimate, b.low, b.high) == (1.0, 1.0, 1.0)
    b = bootstrap({0: [0.0, 1.0, 2.0, 3.0]})
    assert b.low < 1.5 < b.high and b.estimate == 1.5


def test_readme_prints_the_rule_each_claim_function_holds(tmp_path):
    d = write_tables(tmp_path / "t", make_tables())
    text = write_readme(d, tmp_path / "out").read_text()
    import landscape.findings.rules as module

    for fn in CLAIMS:
        n = fn.__name__.split("_")[1]
        assert getattr(module, f"RULE_{n}") in text
    assert "Scale-free verdict" in text and text.count("**supported**") >= 7


def _claims_of(tmp_path, tables):
    return {c["id"]: c for c in claims(write_tables(tmp_path / "t", tables), firmness=False)}


def test_claim_3_needs_two_sliced_epochs_and_its_own_unit_slice(tmp_path):
    """The rule text says it: effect B needs two sliced epochs, and the scale-free verdict needs
    the unit-step slice — without them 'no data', never a verdict on half the evidence."""
    t = make_tables()
    eigen = t["eigen"]
    first = eigen["epoch"].min()
    one_epoch = dict(t, eigen=eigen[eigen["epoch"] == first])
    got = _claims_of(tmp_path / "a", one_epoch)[3]
    assert got["verdict"] == NO_DATA and got["scale_free_verdict"] == NO_DATA
    no_unit = dict(t, eigen=eigen[eigen["slice"].fillna("") != "requantized_unit"])
    got = _claims_of(tmp_path / "b", no_unit)[3]
    assert got["verdict"] == SUPPORTED and got["scale_free_verdict"] == NO_DATA


def test_a_verdict_resting_on_an_unconverged_estimate_says_so(tmp_path):
    t = make_tables()
    tr = t["trace"].copy()
    zq_trace = (tr["run"] == "gdfq") & (tr["metric"] == "trace") & (tr["epoch"] == 2)
    tr.loc[zq_trace, "converged"] = False
    eig = t["eigen"].copy()
    eig.loc[(eig["run"] == "gdfq") & (eig["metric"] == "top_eigenvalue") & (eig["epoch"] == 1), "converged"] = False
    got = _claims_of(tmp_path, dict(t, trace=tr, eigen=eig))
    n_trace, n_eig = int(zq_trace.sum()), 2 * 3  # CE and KL, three seeds
    assert f"rests on {n_trace} unconverged estimate(s)" in got[2]["number"]
    assert f"rests on {n_eig} unconverged estimate(s)" in got[3]["number"]
    assert any("unconverged" in n for n in got[2]["notes"])
    clean = verdicts(tmp_path / "clean")
    assert "unconverged" not in clean[2]["number"] and "unconverged" not in clean[3]["number"]


def test_findings_do_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, landscape.findings, landscape.tables; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
