"""The GI warm-up schedule of an `ait` run, read back from crossings.csv and metrics.csv: κ ≤ 128
in the first student epoch after the generator warm-up, the cap lifted afterwards, and the
safety cap `kappa_max` warned about when it binds after the warm-up (issue 7 §1)."""

import copy
import shutil
import warnings

import pandas as pd
import pytest

from tiny_runs import recipe, train_tiny  # noqa: F401 - the shared fixture

# digits_tiny: epoch 1 = generator warm-up, epoch 2 = GI warm-up (κ ≤ 128), epoch 3 = no cap.
# lr 1e-5 makes the plain steps so small that GI needs κ in the hundreds to reach ρ.
SMALL_LR = 1e-5
SAFETY = "the safety cap kappa_max stopped the GI search"


@pytest.fixture(scope="module")
def teachers(digits_tiny):
    """The session's cached digits_tiny teacher (read-only; copied by each test)."""
    return digits_tiny / "teachers"


def _train_ait(recipe, teachers, out, **overrides):
    changed = copy.deepcopy(recipe)
    changed["runs"]["ait"].update(lr=SMALL_LR, **overrides)
    shutil.copytree(teachers, out / "teachers")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_dir = train_tiny(changed, out, ["ait"])[0]
    messages = [str(w.message) for w in caught if SAFETY in str(w.message)]
    return run_dir, pd.read_csv(run_dir / "crossings.csv"), pd.read_csv(run_dir / "metrics.csv"), messages


def test_kappa_is_capped_at_128_in_the_first_student_epoch_only(recipe, teachers, tmp_path):
    assert (recipe["train"]["warmup_epochs"], recipe["train"]["gi_warmup_epochs"]) == (1, 1)
    run_dir, crossings, metrics, messages = _train_ait(recipe, teachers, tmp_path)
    kappa = crossings.groupby("epoch").kappa.max()
    capped = crossings.groupby("epoch").capped.sum()
    assert sorted(crossings.epoch.unique()) == [2, 3]  # epoch 1: generator only, no student step
    # epoch 2, the GI warm-up: every κ within 128, and the cap binds (the search wanted more)
    assert kappa[2] <= 128 and capped[2] > 0
    assert (crossings[crossings.capped == 1].kappa > 64).all()  # stopped in the last doubling
    # epoch 3: the cap is lifted (the safety cap 2^20 is far away): κ beyond 128, never capped
    assert kappa[3] > 128 and capped[3] == 0
    assert crossings[crossings.epoch == 3].kappa.max() < 2.0 ** 20
    # metrics.csv counts the same capped searches, per epoch
    assert metrics.set_index("epoch").kappa_capped.to_dict() == {1: 0, 2: capped[2], 3: 0}
    assert messages == []  # a binding warm-up cap is expected, not warned about


def test_the_safety_cap_warns_when_it_binds_after_the_warm_up(recipe, teachers, tmp_path):
    run_dir, crossings, metrics, messages = _train_ait(recipe, teachers, tmp_path, kappa_max=8.0)
    after = crossings[crossings.epoch == 3]
    assert after.kappa.max() <= 8 and after.capped.sum() > 0
    n = int(metrics.set_index("epoch").kappa_capped[3])
    assert n == after.capped.sum()
    layers = sorted(set(after[after.capped == 1].layer))
    # one warning, for epoch 3 only (epoch 2's binding cap is the warm-up's, 128)
    assert crossings[crossings.epoch == 2].capped.sum() > 0
    assert messages == [f"{run_dir}: epoch 3: the safety cap kappa_max stopped the GI search {n} times "
                        f"before the target crossing fraction (layers {', '.join(layers[:4])}); raise "
                        "[train] kappa_max if this persists"]
