"""landscape compare: a tiny recipe on sklearn digits end to end (seconds), its numbers against
direct evaluations; the claims' rules on hand-made tables; the [compare] table's checks."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from landscape.checkpoints import load_teacher_file, teacher_from_file
from landscape.cli import main
from landscape.compare import compare_settings, run_compare
from landscape.compare.claims import _spearman, allocation_rows, claim_rows, spearman_rows
from landscape.compare.students import make_student
from landscape.compare.study import analysis_batches
from landscape.config import validate_recipe
from landscape.curvature import mean_loss
from landscape.data import load_dataset
from landscape.findings.verdicts import NO_DATA, NOT_SUPPORTED, SUGGESTIVE, SUPPORTED
from landscape.losses import cross_entropy
from landscape.models import evaluate
from landscape.results import read_blocks
from landscape.schema import RecipeError
from landscape.sensitivity import forward_weight
from landscape.zsq.teacher import teacher_path

TINY = {
    "name": "compare_tiny", "seeds": [0, 1],
    "data": {"name": "digits"}, "model": {"name": "smallcnn", "width": 4}, "teacher": {"epochs": 2, "batch_size": 64},
    "compare": {"quantizers": ["uniform", "pow2"], "bits": [8, 2], "budgets": [2, 3, 5], "analysis_batch_size": 32,
                "calib_batches": 2, "batch_size": 32, "trace_matvecs": 3, "eigen_iters": 2,
                "layer_trace_matvecs": 3, "n_random": 2},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    recipe = validate_recipe(copy.deepcopy(TINY), "tiny.toml")
    readme = root / "README.md"
    readme.write_text("# x\n\n<!-- results:compare:findings -->\n<!-- /results:compare:findings -->\n\n"
                      "<!-- results:compare:timings -->\nold\n<!-- /results:compare:timings -->\n", encoding="utf-8")
    torch.set_num_threads(1)
    tables = run_compare(recipe, out=root / "out", checkpoints=root / "ckpt", jobs=1, publish=readme)
    return recipe, root, tables


def test_tables_have_every_quantizer_bits_and_seed(tiny):
    _, root, tables = tiny
    curv, sens, alloc = tables["curvature"], tables["sensitivity"], tables["allocation"]
    q = curv[curv["quantizer"] != "float"]
    assert set(map(tuple, q[["quantizer", "bits", "seed"]].drop_duplicates().to_numpy())) == {
        (a, b, s) for a in ("uniform", "pow2") for b in (8, 2) for s in (0, 1)}
    assert set(q["metric"]) == {"trace", "lambda_max", "loss", "accuracy"}
    assert len(sens) == 2 * 2 * 2 * 2 * 4  # quantizers × bits × seeds × losses × layers
    for name in ("curvature", "sensitivity", "allocation", "spearman", "allocation_claims"):
        assert (root / "out" / "tables" / f"{name}.csv").is_file()
    for stem in ("compare_curvature", "compare_sensitivity", "compare_prediction", "compare_mixed"):
        for ext in ("png", "pdf", "csv"):
            assert (root / "out" / f"{stem}.{ext}").stat().st_size > 0
    assert set(alloc["strategy"]) == {"guided", "reversed", "uniform", "random"}


def test_measured_damage_and_accuracy_equal_direct_evaluations(tiny):
    recipe, root, tables = tiny
    settings = compare_settings(recipe)
    d = recipe["data"]
    data = load_dataset(d["name"], None, d["test_fraction"], d["split_seed"])
    teacher = teacher_from_file(load_teacher_file(teacher_path(recipe, root / "ckpt", 1)))
    curv = tables["curvature"]
    float_acc = curv[(curv["quantizer"] == "float") & (curv["seed"] == 1)]["value"].item()
    assert float_acc == evaluate(teacher, data.x_test, data.y_test)
    student = make_student(teacher, "pow2", "uniform", 2, 2, data, settings, 1)
    acc = curv[(curv["quantizer"] == "pow2") & (curv["bits"] == 2) & (curv["seed"] == 1) & (curv["metric"] == "accuracy")]
    assert acc["value"].item() == evaluate(student, data.x_test, data.y_test)
    batches = analysis_batches(data, settings, 1)
    sens = tables["sensitivity"]
    rows = sens[(sens["quantizer"] == "pow2") & (sens["bits"] == 2) & (sens["seed"] == 1) & (sens["loss"] == "ce")]
    base = mean_loss(teacher, cross_entropy(), batches)
    for row in rows.itertuples():
        moved = copy.deepcopy(teacher)
        with torch.no_grad():
            dict(moved.named_modules())[row.layer].weight.copy_(forward_weight(dict(student.named_modules())[row.layer]))
        direct = mean_loss(moved, cross_entropy(), batches) - base
        assert row.measured == pytest.approx(direct, rel=1e-6, abs=1e-9)
        assert abs(row.measured) > 1e-6
    alloc = tables["allocation"]
    uni = alloc[(alloc["strategy"] == "uniform") & (alloc["quantizer"] == "pow2") & (alloc["seed"] == 1)]
    assert list(uni["budget"]) == [2.0] and uni["avg_bits"].item() == 2.0  # 3 and 5 are not widths
    # uniform 2-bit weights, float activations: the float model computing with every forward weight
    weight_only = copy.deepcopy(teacher)
    with torch.no_grad():
        for name, m in student.named_modules():
            w = forward_weight(m)
            if w is not None:
                dict(weight_only.named_modules())[name].weight.copy_(w)
    assert uni["accuracy"].item() == evaluate(weight_only, data.x_test, data.y_test)
    for row in alloc.itertuples():
        assert row.avg_bits <= row.budget + 1e-12
        sizes = rows.set_index("layer")["n_params"]
        bits = json.loads(row.allocation)
        assert row.avg_bits == pytest.approx(sum(bits[l] * sizes[l] for l in bits) / sizes.sum())


def test_findings_and_published_blocks(tiny):
    _, root, _ = tiny
    results = read_blocks((root / "out" / "results.md").read_text(encoding="utf-8"))
    assert set(results) == {"compare:findings", "compare:timings"}
    readme = read_blocks((root / "README.md").read_text(encoding="utf-8"))
    assert readme == results
    assert "| 1 | the second-order term predicts" in results["compare:findings"]
    assert "| measure |" in results["compare:timings"] and "old" not in results["compare:timings"]
    assert (root / "out" / "README.md").read_text(encoding="utf-8").count("![compare_") == 4


# ----------------------------------------------------------------------------- the rules


def test_spearman_statistic_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 9, 2))
    x[:, :, 1] += x[:, :, 0]
    x[0, :3, 0] = 1.0  # ties
    got = _spearman(x)
    want = [spearmanr(r[:, 0], r[:, 1]).statistic for r in x]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert math.isnan(_spearman(np.ones((1, 4, 2)))[0])


def _sens(seed_rows: dict) -> pd.DataFrame:
    rows = []
    for q, per_seed in seed_rows.items():
        for seed, pairs in per_seed.items():
            for i, (pred, meas) in enumerate(pairs):
                rows.append({"quantizer": q, "seed": seed, "loss": "ce", "layer": f"l{i}", "bits": 2,
                             "second_order": pred, "taylor": pred, "trace_proxy": pred, "measured": meas})
    return pd.DataFrame(rows)


def test_claim_1_levels_on_hand_made_tables():
    perfect = {s: [(i, 10 * i) for i in range(6)] for s in range(3)}
    reversed_ = {s: [(i, -i) for i in range(6)] for s in range(3)}
    sp = spearman_rows(_sens({"good": perfect, "bad": reversed_}))
    good = next(r for r in sp if r["quantizer"] == "good" and r["predictor"] == "second_order")
    assert good["rho"] == 1.0 and good["n_points"] == 18
    rows = {(r["id"], r["quantizer"]): r for r in claim_rows(sp, [])}
    assert rows[(1, "good")]["verdict"] == SUPPORTED
    assert rows[(1, "bad")]["verdict"] == NOT_SUPPORTED
    assert rows[(2, "good")]["verdict"] == NO_DATA  # no allocation table: never better than no data
    one_seed = spearman_rows(_sens({"q": {0: [(0, 0), (1, 2), (2, 1), (3, 3), (4, 4)]}}))
    (r1,) = [r for r in claim_rows(one_seed, []) if r["id"] == 1 and r["quantizer"] == "q"]
    assert r1["number"].startswith("ρ = 0.90") and r1["verdict"] == SUGGESTIVE  # ρ > 0.5, interval reaches below


def _alloc(deltas_uniform: list[float], deltas_random: list[float]) -> pd.DataFrame:
    rows = []
    for seed, (du, dr) in enumerate(zip(deltas_uniform, deltas_random)):
        for budget in (3.0, 4.0):
            rows += [{"quantizer": "q", "seed": seed, "budget": budget, "strategy": "guided", "accuracy": 90.0},
                     {"quantizer": "q", "seed": seed, "budget": budget, "strategy": "uniform", "accuracy": 90.0 - du},
                     {"quantizer": "q", "seed": seed, "budget": budget, "strategy": "random", "accuracy": 90.0 - dr - 1},
                     {"quantizer": "q", "seed": seed, "budget": budget, "strategy": "random", "accuracy": 90.0 - dr + 1}]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("uniform, random, level", [
    ([2.0, 2.5, 3.0], [1.0, 1.5, 2.0], SUPPORTED),
    ([2.0, -1.0, 3.0], [1.0, 1.5, 2.0], SUGGESTIVE),   # vs uniform: the interval reaches below 0
    ([2.0, 2.5, 3.0], [-1.0, -1.5, -2.0], NOT_SUPPORTED),
    ([0.0, 0.0, 0.0], [1.0, 1.5, 2.0], NOT_SUPPORTED),  # a tie is not a win
])
def test_claim_2_levels_on_hand_made_tables(uniform, random, level):
    rows = allocation_rows(_alloc(uniform, random))
    vs = {(r["quantizer"], r["against"]): r for r in rows}
    assert vs[("q", "uniform")]["delta"] == pytest.approx(np.mean(uniform))
    assert vs[("q", "random")]["delta"] == pytest.approx(np.mean(random))
    (claim,) = [r for r in claim_rows([], rows) if r["id"] == 2 and r["quantizer"] == "q"]
    assert claim["verdict"] == level


# ----------------------------------------------------------------------------- the [compare] table


def test_compare_settings_defaults_and_refusals():
    recipe = validate_recipe(copy.deepcopy(TINY), "tiny.toml")
    s = compare_settings(recipe)
    assert s["bits"] == [8, 2] and s["seeds"] == [0, 1] and s["a_bits"] == "same" and s["budgets"] == [2, 3, 5]
    bad = [({"quantizers": ["uniformm"]}, "unknown quantizer 'uniformm'"),
           ({"budgets": [1.5]}, r"budgets \[1.5\] lie outside"),
           ({"a_bits": "four"}, "a_bits = 'four'"),
           ({"mode": "train"}, "mode"),
           ({"bitz": [2]}, "did you mean 'bits'")]
    for change, message in bad:
        r = copy.deepcopy(TINY)
        r["compare"].update(change)
        with pytest.raises(RecipeError, match=message):
            compare_settings(validate_recipe(r, "tiny.toml"))
    r = copy.deepcopy(TINY)
    r["compare"]["a_bits"] = "none"
    assert compare_settings(validate_recipe(r, "tiny.toml"))["a_bits"] is None


def test_cli_compare_refuses_a_bad_recipe_in_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\nname = "digits"\n[compare]\nquantizers = ["nope"]\n', encoding="utf-8")
    assert main(["compare", str(recipe), "--out", str(tmp_path / "o"), "--checkpoints", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "unknown quantizer 'nope'" in err and "Traceback" not in err


def test_qat_mode_trains_the_weights_and_the_quantizer_step(tiny):
    recipe, root, _ = tiny
    d = recipe["data"]
    data = load_dataset(d["name"], None, d["test_fraction"], d["split_seed"])
    teacher = teacher_from_file(load_teacher_file(teacher_path(recipe, root / "ckpt", 0))).requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    r = copy.deepcopy(TINY)
    r["compare"].update(mode="qat", qat_steps=3, qat_lr=0.01)
    qat = compare_settings(validate_recipe(r, "tiny.toml"))
    ptq = compare_settings(validate_recipe(copy.deepcopy(TINY), "tiny.toml"))
    a = make_student(teacher, "lsq", "lsq", 3, 3, data, ptq, 0)
    b = make_student(teacher, "lsq", "lsq", 3, 3, data, qat, 0)
    again = make_student(teacher, "lsq", "lsq", 3, 3, data, qat, 0)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert not torch.equal(pa["fc.weight"], pb["fc.weight"])          # the weights trained
    steps = [n for n in pa if n.endswith(".wq.step") or ".wq." in n]
    assert steps and any(not torch.equal(pa[n], pb[n]) for n in steps)  # and LSQ's step with them
    assert all(torch.equal(pb[n], p) for n, p in again.named_parameters())  # seeded: the same student twice
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in b.parameters())


def test_the_pooled_row_counts_a_weight_quantizer_once():
    """PACT quantizes activations only: its weight-only damage repeats uniform's points, which the
    pooled 'all' row must not count twice; ‖δ‖² is reported as the curvature-free baseline."""
    import numpy as np
    import pandas as pd

    from landscape.compare.claims import spearman_rows

    rng = np.random.default_rng(0)
    rows = []
    for q in ("uniform", "pact", "lsq"):
        for seed in (0, 1):
            for i in range(5):
                r = rng.random(4) if q != "pact" else None
                rows.append({"quantizer": q, "seed": seed, "loss": "ce", "layer": f"l{i}", "bits": 4, "n_params": 10,
                             "measured": 0.0, "second_order": 0.0, "taylor": 0.0, "trace_proxy": 0.0,
                             "delta_sq_mean": 0.0} if r is None else
                            {"quantizer": q, "seed": seed, "loss": "ce", "layer": f"l{i}", "bits": 4, "n_params": 10,
                             "measured": r[0], "second_order": r[1], "taylor": r[2], "trace_proxy": r[3],
                             "delta_sq_mean": r[1] / 10})
    df = pd.DataFrame(rows)
    pact = df["quantizer"] == "pact"
    df.loc[pact, ["measured", "second_order", "taylor", "trace_proxy", "delta_sq_mean"]] = \
        df.loc[df["quantizer"] == "uniform", ["measured", "second_order", "taylor", "trace_proxy",
                                                "delta_sq_mean"]].to_numpy()
    out = {(r["quantizer"], r["predictor"]): r for r in spearman_rows(df)}
    assert out[("all", "second_order")]["n_points"] == 20  # uniform and lsq, 2 seeds × 5 layers each
    # ‖δ‖² = delta_sq_mean · n_params ranks exactly as second_order here
    assert out[("lsq", "delta_sq")]["rho"] == out[("lsq", "second_order")]["rho"]
