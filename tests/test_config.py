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
    assert (r["quant"]["w_bits"], r["quant"]["a_bits"], ait["weight_zero_point"]) == (4, 4, "integral")
    assert (ait["epochs"], ait["iters_per_epoch"], ait["batch_size"], ait["warmup_epochs"]) == (400, 200, 200, 4)
    assert (ait["lr"], ait["momentum"], ait["nesterov"], ait["temperature"]) == (1e-4, 0.9, True, 20.0)
    assert (ait["kl_reduction"], ait["rho"], ait["milestones"]) == ("mean", 1e-3, [100, 200, 300])
    # the official GI: its own step, kappa <= 128 in the first student epoch only, no cap after
    assert (ait["gi_form"], ait["gi_warmup_epochs"], ait["kappa_max_warmup"]) == ("official", 1, 128.0)
    assert ait["kappa_max"] >= 2**20 and (ait["latent_dim"], ait["gen_width"]) == (100, 128)


def test_default_recipe_has_no_whole_run_kappa_cap():
    r = load_recipe(ROOT / "analyses" / "default.toml")
    ait = resolve_run(r, "ait")
    assert (ait["gi_form"], ait["gi_warmup_epochs"], ait["kappa_max_warmup"]) == ("official", 1, 128.0)
    assert ait["kappa_max"] >= 2**20 and r["threads"] == 1 and r["seeds"] == [0, 1, 2, 3, 4]


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(RecipeError, match=r"\[train\] has no key 'temprature'; did you mean 'temperature'"):
        validate_recipe({**MINIMAL, "train": {"temprature": 4}}, "r.toml")
    with pytest.raises(RecipeError, match=r"\[runs.kd\] has no key 'kd_scal'; did you mean 'kd_scale'"):
        validate_recipe({"runs": {"kd": {"kd_scal": 1}}}, "r.toml")
    with pytest.raises(RecipeError, match="has no key 'datta'; did you mean 'data'"):
        validate_recipe({**MINIMAL, "datta": {}}, "r.toml")


@pytest.mark.parametrize("bits", [1, 17, 3.5, "4", True])
def test_bits_out_of_range(bits):
    # was "bits must be an integer from 2 to 16": the one schema now phrases every key alike,
    # and a wrong type says so instead of "out of range"
    with pytest.raises(RecipeError, match=r"\[quant\] w_bits = .* expected an integer from 2 to 16"):
        validate_recipe({**MINIMAL, "quant": {"w_bits": bits}}, "r.toml")
    with pytest.raises(RecipeError, match=r"\[runs.kd\] a_bits = .* expected an integer from 2 to 16"):
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
    binary = tmp_path / "model.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RecipeError, match=r"model.toml is not a text file"):
        load_recipe(binary)


def test_run_overrides_resolve_over_train_defaults():
    recipe = validate_recipe({"train": {"lr": 0.5}, "quant": {"w_bits": 3},
                              "runs": {"a": {"lr": 0.1, "a_bits": 8}, "b": {}}}, "r.toml")
    a, b = resolve_run(recipe, "a"), resolve_run(recipe, "b")
    assert (a["lr"], a["w_bits"], a["a_bits"]) == (0.1, 3, 8)
    assert (b["lr"], b["w_bits"], b["a_bits"]) == (0.5, 3, 4)


# ----------------------------------------------------------------------------- the schema (issue 11 §5)

@pytest.mark.parametrize("section,key,value,message", [
    ("teacher", "epochs", -2, r"\[teacher\] epochs = -2 is out of range; expected an integer >= 1"),
    ("teacher", "epochs", "3", r"\[teacher\] epochs = '3' is a string; expected an integer >= 1"),
    ("teacher", "lr", "0.1", r"\[teacher\] lr = '0.1' is a string; expected a number in \(0, 10\]"),
    ("teacher", "lr", 0.0, r"\[teacher\] lr = 0.0 is out of range; expected a number in \(0, 10\]"),
    ("train", "epochs", 3.5, r"\[train\] epochs = 3.5 is a float; expected an integer >= 1"),
    ("model", "width", "4", r"\[model\] width = '4' is a string; expected an integer from 1 to 4096"),
    ("model", "width", 0, r"\[model\] width = 0 is out of range; expected an integer from 1 to 4096"),
    ("train", "nesterov", 1, r"\[train\] nesterov = 1 is an integer; expected true or false"),
    ("train", "milestones", [3, "6"], r"\[train\] milestones = \[3, '6'\] is a list; expected a list of integers >= 1"),
    ("train", "gi_form", "buffr", r"\[train\] gi_form = 'buffr' is not one of official, buffer; did you mean 'buffer'"),
    ("quant", "weight_zero_point", "int", r"weight_zero_point = 'int' is not one of integral, float"),
    ("data", "split_seed", -1, r"\[data\] split_seed = -1 is out of range; expected an integer >= 0"),
])
def test_every_key_is_typed_and_ranged_naming_section_and_key(section, key, value, message):
    with pytest.raises(RecipeError, match=message):
        validate_recipe({**MINIMAL, section: {key: value}}, "r.toml")


def test_run_tables_use_the_same_schema_and_floats_take_integers():
    with pytest.raises(RecipeError, match=r"\[runs.kd\] epochs = '3' is a string; expected an integer"):
        validate_recipe({"runs": {"kd": {"epochs": "3"}}}, "r.toml")
    recipe = validate_recipe({"train": {"lr": 1}, "runs": {"kd": {"rho": 0}}}, "r.toml")
    assert recipe["train"]["lr"] == 1.0 and isinstance(recipe["train"]["lr"], float)


def test_top_level_seed_seeds_and_threads():
    r = validate_recipe({**MINIMAL, "seed": 3}, "r.toml")
    assert (r["seed"], r["seeds"], r["threads"]) == (3, [3], 1)
    r = validate_recipe({**MINIMAL, "seeds": [0, 1, 2], "threads": 4}, "r.toml")
    assert (r["seeds"], r["threads"]) == ([0, 1, 2], 4)
    for raw, message in [({"seed": -1}, r"seed = -1 is out of range; expected an integer from 0 to 9223372036854775807"),
                         ({"seeds": [0, 0]}, r"seeds = \[0, 0\] is out of range; expected a non-empty list of distinct"),
                         ({"seeds": []}, r"seeds = \[\] is out of range"),
                         ({"threads": 0}, r"threads = 0 is out of range; expected an integer from 1"),
                         ({"threads": "2"}, r"threads = '2' is a string")]:
        with pytest.raises(RecipeError, match=message):
            validate_recipe({**MINIMAL, **raw}, "r.toml")


def test_a_data_root_that_is_never_used_is_refused():
    with pytest.raises(RecipeError, match=r"\[data\] root = '/nonexistent' has no effect: mnist5k"):
        validate_recipe({**MINIMAL, "data": {"root": "/nonexistent"}}, "r.toml")
    validate_recipe({**MINIMAL, "data": {"name": "cifar10", "root": "/somewhere"}}, "r.toml")


def test_cli_overrides_go_through_the_same_checks():
    from landscape.config import check_overrides

    check_overrides(seed=2, epochs=3, threads=1, runs=["kd"])
    for kwargs, message in [({"seed": -1}, r"--seed = -1 is out of range; expected an integer from 0 to 9223372036854775807"),
                            ({"epochs": 0}, r"--epochs = 0 is out of range"),
                            ({"epochs": 2.5}, r"--epochs = 2.5 is a float"),
                            ({"threads": 0}, r"--threads = 0 is out of range"),
                            ({"runs": []}, r"--runs = \[\]; expected one or more run names"),
                            ({"data_root": "/x", "data_name": "digits"}, r"--data-root /x has no effect")]:
        with pytest.raises(RecipeError, match=message):
            check_overrides(**kwargs)


def test_schema_module_is_reusable_for_other_sections():
    from landscape.schema import Choice, Float, Int, check_section

    fields = {"n": Int(3, lo=1), "tol": Float(1e-3, 0.0, 1.0, lo_open=True), "how": Choice("a", ("a", "b"))}
    assert check_section({"n": 5}, fields, "[analysis.trace]") == {"n": 5, "tol": 1e-3, "how": "a"}
    assert check_section({"n": 5}, fields, "[analysis.trace]", defaults=False) == {"n": 5}
    with pytest.raises(RecipeError, match=r"\[analysis.trace\] has no key 'tl'; did you mean 'tol'"):
        check_section({"tl": 1}, fields, "[analysis.trace]")
    with pytest.raises(RecipeError, match=r"\[analysis.trace\] tol = 0.0 is out of range; expected a number in \(0, 1\]"):
        check_section({"tol": 0.0}, fields, "[analysis.trace]")
    with pytest.raises(RecipeError, match=r"\[analysis.trace\] must be a table"):
        check_section(3, fields, "[analysis.trace]")
