"""Recipes: defaults, validation with one clear message per mistake, pass-through sections."""

from pathlib import Path

import pytest

from landscape.config import RecipeError, check_keys, load_recipe, resolve_run, validate_recipe

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"runs": {"kd": {"source": "real"}}}


@pytest.mark.parametrize("name", ["default", "digits_tiny", "cifar10_resnet20_w4a4"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(ROOT / "analyses" / f"{name}.toml")
    assert recipe["name"] == name
    for run in recipe["runs"]:
        cfg = resolve_run(recipe, run)
        assert cfg["name"] == run and 2 <= cfg["w_bits"] <= 16


def test_default_recipe_has_the_five_runs():
    recipe = load_recipe(ROOT / "analyses" / "default.toml")
    assert set(recipe["runs"]) == {"ptq", "kd", "gdfq", "kl", "ait"}
    ait, kl = resolve_run(recipe, "ait"), resolve_run(recipe, "kl")
    assert ait["gi"] and not kl["gi"] and ait["ce_scale"] == kl["ce_scale"] == 0.0


def test_cifar_recipe_has_the_official_hyper_parameters():
    r = load_recipe(ROOT / "analyses" / "cifar10_resnet20_w4a4.toml")
    ait = resolve_run(r, "ait")
    assert (r["quant"]["w_bits"], r["quant"]["a_bits"]) == (4, 4)
    assert (ait["epochs"], ait["iters_per_epoch"], ait["batch_size"], ait["warmup_epochs"]) == (400, 200, 200, 4)
    assert (ait["lr"], ait["momentum"], ait["nesterov"], ait["temperature"]) == (1e-4, 0.9, True, 20.0)
    assert (ait["kl_reduction"], ait["rho"], ait["milestones"]) == ("mean", 1e-3, [100, 200, 300])


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(RecipeError, match=r"\[train\] has no key 'temprature'; did you mean 'temperature'"):
        validate_recipe({**MINIMAL, "train": {"temprature": 4}}, "r.toml")
    with pytest.raises(RecipeError, match=r"\[runs.kd\] has no key 'kd_scal'; did you mean 'kd_scale'"):
        validate_recipe({"runs": {"kd": {"kd_scal": 1}}}, "r.toml")
    with pytest.raises(RecipeError, match="has no key 'datta'; did you mean 'data'"):
        validate_recipe({**MINIMAL, "datta": {}}, "r.toml")


@pytest.mark.parametrize("bits", [1, 17, 3.5, "4", True])
def test_bits_out_of_range(bits):
    with pytest.raises(RecipeError, match="bits must be an integer from 2 to 16"):
        validate_recipe({**MINIMAL, "quant": {"w_bits": bits}}, "r.toml")
    with pytest.raises(RecipeError, match="a_bits"):
        validate_recipe({"runs": {"kd": {"a_bits": bits}}}, "r.toml")


def test_bad_values_are_one_clear_message():
    with pytest.raises(RecipeError, match="source = 'synthtic' is not one of .*did you mean 'synthetic'"):
        validate_recipe({"runs": {"x": {"source": "synthtic"}}}, "r.toml")
    with pytest.raises(RecipeError, match="kl_reduction"):
        validate_recipe({"runs": {"x": {"kl_reduction": "sum"}}}, "r.toml")
    with pytest.raises(RecipeError, match="warmup_epochs .* must be smaller than epochs"):
        validate_recipe({"runs": {"x": {"epochs": 2, "warmup_epochs": 2}}}, "r.toml")
    with pytest.raises(RecipeError, match="at least one"):
        validate_recipe({}, "r.toml")
    with pytest.raises(RecipeError, match="no run 'ati'; did you mean 'ait'"):
        resolve_run(validate_recipe({"runs": {"ait": {}}}, "r.toml"), "ati")


def test_analysis_and_figures_sections_pass_through_untouched():
    raw = {**MINIMAL, "analysis": {"anything": {"x": 1}}, "figures": {"dpi": 100}}
    recipe = validate_recipe(raw, "r.toml")
    assert recipe["analysis"] == {"anything": {"x": 1}} and recipe["figures"] == {"dpi": 100}


def test_check_keys_for_the_analyzers():
    check_keys({"trace": 1}, {"trace", "eigen"}, "[analysis]")
    with pytest.raises(RecipeError, match=r"\[analysis\] has no key 'eigne'; did you mean 'eigen'"):
        check_keys({"eigne": 1}, {"trace", "eigen"}, "[analysis]")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


def test_run_overrides_resolve_over_train_defaults():
    recipe = validate_recipe({"train": {"lr": 0.5}, "quant": {"w_bits": 3},
                              "runs": {"a": {"lr": 0.1, "a_bits": 8}, "b": {}}}, "r.toml")
    a, b = resolve_run(recipe, "a"), resolve_run(recipe, "b")
    assert (a["lr"], a["w_bits"], a["a_bits"]) == (0.1, 3, 8)
    assert (b["lr"], b["w_bits"], b["a_bits"]) == (0.5, 3, 4)
