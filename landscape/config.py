"""Recipes: one TOML file per experiment, read into plain data and checked.

A recipe has the sections

    name, description, seed      top-level: strings and the default run seed
    [data]    which data set and split          (DATA_KEYS)
    [model]   which teacher architecture        (MODEL_KEYS)
    [quant]   bit-widths of the student         (QUANT_KEYS)
    [teacher] how the FP teacher is trained     (TEACHER_KEYS)
    [train]   defaults shared by every run      (TRAIN_KEYS)
    [runs.<name>] one table per run, overriding [train] keys
    [analysis], [figures]  passed through untouched for the analyzers, which check them
                           with :func:`check_keys` themselves.

Every key not listed is an error naming the key and the closest valid one. The defaults
below are the embedded-default values; a recipe only writes what it changes.
"""

from __future__ import annotations

import copy
import difflib
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the key and the fix."""


TOP_KEYS = {"name", "description", "seed", "data", "model", "quant", "teacher", "train", "runs",
            "analysis", "figures"}

DATA_DEFAULTS: dict[str, Any] = {
    "name": "mnist5k",        # mnist5k | digits | fashion-mnist | cifar10 | cifar100
    "root": "",               # folder (or .tar.gz for CIFAR); "" = the data set's default
    "test_fraction": 0.2,     # held-out share for the data sets without a fixed test split
    "split_seed": 0,          # seeded stratified split; fixed across run seeds on purpose
}
MODEL_DEFAULTS: dict[str, Any] = {
    "name": "smallcnn",       # smallcnn | resnet20
    "width": 16,              # smallcnn: channels of the first conv (then 2x, 4x)
}
QUANT_DEFAULTS: dict[str, Any] = {
    "w_bits": 4,
    "a_bits": 4,
    "act_momentum": 0.9,      # EMA of the activation range during warm-up
}
TEACHER_DEFAULTS: dict[str, Any] = {
    "epochs": 8,
    "batch_size": 128,
    "lr": 0.1,                # SGD, Nesterov momentum 0.9, cosine decay to 0
    "momentum": 0.9,
    "weight_decay": 5e-4,
}
TRAIN_DEFAULTS: dict[str, Any] = {
    "source": "synthetic",    # synthetic (generator) | real (training data, the KD reference) | none (PTQ)
    "epochs": 12,             # all epochs, the generator-only warm-up included
    "iters_per_epoch": 30,
    "batch_size": 128,
    "warmup_epochs": 2,       # generator-only epochs (student frozen, activation ranges EMA-updated)
    "lr": 1e-3,               # student SGD
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 0.0,
    "milestones": [],         # lr (and generator lr, and rho) x gamma at these epochs
    "gamma": 0.1,
    "ce_scale": 1.0,          # student loss = ce_scale * CE + kd_scale * T^2 KL
    "kd_scale": 1.0,
    "temperature": 20.0,
    "kl_reduction": "batchmean",   # batchmean (true KL) | mean (nn.KLDivLoss default, official AIT)
    "gi": False,              # gradient inundation on every quantized weight
    "rho": 1e-3,              # GI target crossing fraction
    "gi_warmup_epochs": 2,    # GI warm-up (after the generator warm-up): kappa <= kappa_max_warmup
    "kappa_max_warmup": 128.0,
    "kappa_max": 65536.0,     # safety cap after the GI warm-up (the paper gives none)
    "bisect_steps": 5,
    "latent_dim": 64,         # generator
    "gen_width": 128,         # generator channels (GDFQ: 128)
    "gen_lr": 1e-3,           # Adam, betas (0.5, 0.999)
    "bns_scale": 0.1,
    "calib_batches": 4,       # PTQ calibration batches (real training data)
    "analysis_batches": 2,    # fixed batches kept in every checkpoint for the analyzers
    "analysis_batch_size": 128,
}
RUN_KEYS = set(TRAIN_DEFAULTS)
SECTION_DEFAULTS = {"data": DATA_DEFAULTS, "model": MODEL_DEFAULTS, "quant": QUANT_DEFAULTS,
                    "teacher": TEACHER_DEFAULTS, "train": TRAIN_DEFAULTS}

DATASETS = ("mnist5k", "digits", "fashion-mnist", "cifar10", "cifar100")
MODELS = ("smallcnn", "resnet20")
SOURCES = ("synthetic", "real", "none")
REDUCTIONS = ("batchmean", "mean")
MIN_BITS, MAX_BITS = 2, 16


def check_keys(section: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise :class:`RecipeError` for the first key of ``section`` not in ``allowed``.

    The message names the key, where it was found, and the closest allowed key
    (``difflib``), e.g. ``[train] has no key 'lr_decay'; did you mean 'gamma'?``.
    """
    allowed = set(allowed)
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"{where} has no key '{key}'{hint} "
                              f"(allowed: {', '.join(sorted(allowed))})")


def _check_range(value: Any, lo: float, hi: float, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise RecipeError(f"{where} = {value!r} is out of range; expected a number in [{lo}, {hi}]")


def _check_choice(value: Any, choices: Iterable[str], where: str) -> None:
    choices = tuple(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"{where} = {value!r} is not one of {', '.join(choices)}{hint}")


def check_bits(bits: Any, where: str) -> int:
    """Bit-widths are integers in [2, 16]; anything else is one clear error."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise RecipeError(f"{where} = {bits!r} is out of range; bits must be an integer "
                          f"from {MIN_BITS} to {MAX_BITS}")
    return bits


def validate_recipe(raw: Mapping[str, Any], source: str = "<recipe>") -> dict:
    """Check a raw recipe dict and fill in defaults; returns a new dict."""
    check_keys(raw, TOP_KEYS, f"recipe {source}")
    recipe: dict[str, Any] = {"name": str(raw.get("name", Path(source).stem or "recipe")),
                              "description": str(raw.get("description", "")),
                              "seed": raw.get("seed", 0)}
    if isinstance(recipe["seed"], bool) or not isinstance(recipe["seed"], int) or recipe["seed"] < 0:
        raise RecipeError(f"{source}: seed = {recipe['seed']!r}; expected a non-negative integer")
    for section, defaults in SECTION_DEFAULTS.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise RecipeError(f"{source}: [{section}] must be a table")
        check_keys(given, defaults, f"{source}: [{section}]")
        merged = copy.deepcopy(defaults)
        merged.update(given)
        recipe[section] = merged
    _check_choice(recipe["data"]["name"], DATASETS, f"{source}: [data] name")
    _check_choice(recipe["model"]["name"], MODELS, f"{source}: [model] name")
    _check_range(recipe["data"]["test_fraction"], 0.01, 0.9, f"{source}: [data] test_fraction")
    for key in ("w_bits", "a_bits"):
        check_bits(recipe["quant"][key], f"{source}: [quant] {key}")
    _check_range(recipe["quant"]["act_momentum"], 0.0, 1.0, f"{source}: [quant] act_momentum")

    runs = raw.get("runs", {})
    if not isinstance(runs, dict) or not runs:
        raise RecipeError(f"{source}: a recipe needs at least one [runs.<name>] table")
    recipe["runs"] = {}
    for name, overrides in runs.items():
        if not isinstance(overrides, dict):
            raise RecipeError(f"{source}: [runs.{name}] must be a table")
        check_keys(overrides, RUN_KEYS | {"w_bits", "a_bits"}, f"{source}: [runs.{name}]")
        recipe["runs"][name] = dict(overrides)
        validate_run(resolve_run(recipe, name), f"{source}: [runs.{name}]")
    # the analyzers' sections travel untouched; they check them with check_keys
    for section in ("analysis", "figures"):
        if section in raw:
            recipe[section] = copy.deepcopy(raw[section])
    return recipe


def validate_run(run: Mapping[str, Any], where: str) -> None:
    _check_choice(run["source"], SOURCES, f"{where} source")
    _check_choice(run["kl_reduction"], REDUCTIONS, f"{where} kl_reduction")
    for key in ("w_bits", "a_bits"):
        check_bits(run[key], f"{where} {key}")
    for key in ("epochs", "iters_per_epoch", "batch_size", "analysis_batches",
                "analysis_batch_size", "calib_batches"):
        _check_range(run[key], 1, 10**7, f"{where} {key}")
    for key in ("warmup_epochs", "gi_warmup_epochs", "bisect_steps"):
        _check_range(run[key], 0, 10**7, f"{where} {key}")
    if run["source"] != "none" and run["warmup_epochs"] >= run["epochs"]:
        raise RecipeError(f"{where}: warmup_epochs ({run['warmup_epochs']}) must be smaller "
                          f"than epochs ({run['epochs']}) or the student never trains")
    _check_range(run["rho"], 0.0, 1.0, f"{where} rho")
    _check_range(run["temperature"], 1e-3, 1e4, f"{where} temperature")
    _check_range(run["kappa_max_warmup"], 1.0, 1e12, f"{where} kappa_max_warmup")
    _check_range(run["kappa_max"], 1.0, 1e12, f"{where} kappa_max")
    for key in ("lr", "gen_lr", "momentum", "weight_decay", "gamma", "ce_scale", "kd_scale",
                "bns_scale"):
        _check_range(run[key], 0.0, 1e6, f"{where} {key}")
    if not isinstance(run["milestones"], list) or not all(
            isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in run["milestones"]):
        raise RecipeError(f"{where} milestones = {run['milestones']!r}; expected a list of "
                          "positive epoch numbers")


def resolve_run(recipe: Mapping[str, Any], name: str) -> dict:
    """The full config of one run: [train] defaults, the recipe's bits, then the run's overrides."""
    if name not in recipe["runs"]:
        close = difflib.get_close_matches(name, list(recipe["runs"]), n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"recipe '{recipe['name']}' has no run '{name}'{hint} "
                          f"(runs: {', '.join(recipe['runs'])})")
    run = copy.deepcopy(recipe["train"])
    run["w_bits"] = recipe["quant"]["w_bits"]
    run["a_bits"] = recipe["quant"]["a_bits"]
    run.update(copy.deepcopy(recipe["runs"][name]))
    run["name"] = name
    return run


def load_recipe(path: str | Path) -> dict:
    """Read and check a recipe TOML; unknown keys and out-of-range values are one clear error."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist; recipes live in analyses/ "
                          "(e.g. analyses/default.toml)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {path} is not valid TOML: {exc}") from None
    recipe = validate_recipe(raw, str(path))
    recipe["path"] = str(path)
    return recipe
