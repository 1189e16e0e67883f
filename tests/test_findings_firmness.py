"""How firmly a verdict stands: leave-one-seed-out and exact seed resamples (landscape.findings.robustness)."""

from __future__ import annotations

import math

from synthetic_tables import make_tables

from landscape.findings import claims, claims_table
from landscape.findings.robustness import _resamples, firmness, with_seeds
from landscape.tables import resolve_roles


def test_resamples_are_every_multiset_with_its_bootstrap_probability():
    out = dict(_resamples([0, 1, 2]))
    assert len(out) == math.comb(5, 3) == 10
    assert math.isclose(sum(out.values()), 1.0)
    assert math.isclose(out[(0, 0, 0)], 1 / 27) and math.isclose(out[(0, 1, 2)], 6 / 27)
    assert math.isclose(out[(0, 0, 1)], 3 / 27)


def test_a_seed_drawn_twice_counts_as_two_seeds_with_the_same_data():
    t = make_tables(epochs=3)
    r = with_seeds(t, [1, 1, 2])
    cos = r["cosine"]
    assert sorted(cos["seed"].unique()) == [1, 2, 1_000_001]
    a = cos[cos["seed"] == 1].drop(columns="seed").reset_index(drop=True)
    b = cos[cos["seed"] == 1_000_001].drop(columns="seed").reset_index(drop=True)
    assert a.equals(b) and len(cos) == 3 * len(t["cosine"][t["cosine"]["seed"] == 0])


def _one_seed_reverses_claim_7():
    t = make_tables(epochs=4)
    tr = t["training"].copy()
    hit = (tr["run"] == "ait") & (tr["seed"] == 2) & tr["metric"].isin(["test_acc", "best_acc"])
    tr.loc[hit, "value"] -= 30.0  # seed 2 alone: AIT far below GDFQ
    return {**t, "training": tr}


def test_a_verdict_one_seed_moves_is_marked_as_resting_on_a_boundary():
    t = _one_seed_reverses_claim_7()
    rows = {r["id"]: r for r in claims(None, tables=t)}
    # the leave-one-out count is what judging each two-seed table gives
    direct = [{r["id"]: r["verdict"] for r in claims(None, tables=with_seeds(t, keep), firmness=False)}[7]
              for keep in ([1, 2], [0, 2], [0, 1])]
    firm = firmness(t, resolve_roles(None), list(rows.values()))[7]["verdict"]
    assert firm.loo_same == sum(v == rows[7]["verdict"] for v in direct) < 3
    assert rows[7]["on_boundary"] and "rests on a boundary" in rows[7]["firmness"]["verdict"]
    assert 0 < firm.resample_share < 1
    # a clear-cut claim stands in every leave-one-out and every resample
    assert rows[2]["firmness"]["verdict"] == "3 of 3 leave-one-out; 100 % of resamples"
    assert not rows[2]["on_boundary"]
    assert "How firmly" in claims_table(list(rows.values())) and "rests on a boundary" in claims_table(list(rows.values()))


def test_one_seed_has_no_firmness_column():
    rows = claims(None, tables=make_tables(seeds=(0,), epochs=3))
    assert all(r["firmness"] == {} and not r["on_boundary"] for r in rows)
    assert "How firmly" not in claims_table(rows)
