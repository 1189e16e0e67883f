"""Recipes: one TOML file per experiment, read into plain data and checked key by key.

A recipe has the sections

    name, description, seed, seeds, threads, reproducible    top-level (TOP_FIELDS)
    [data]    which data set and split          (DATA_FIELDS)
    [model]   which teacher architecture        (MODEL_FIELDS)
    [quant]   bit-widths, weight grid, quantizers (QUANT_FIELDS; ``weight``/``act``: a built-in
              name or "package.module:Name", see :mod:`landscape.quant.interface`)
    [teacher] how the FP teacher is trained, or which pretrained weights to load (TEACHER_FIELDS)
    [train]   defaults shared by every run      (TRAIN_FIELDS)
    [runs.<name>] one table per run, overriding [train] keys (and w_bits, a_bits,
                  weight_zero_point, weight, act)
    [analysis], [figures], [compare]  passed through untouched for the analyzers (and
                           `landscape compare`), which check them
                           with the same schema (:mod:`landscape.schema`) themselves.

Every key has a type, a range and a default in one schema (:mod:`landscape.schema`); an
unknown key, a wrong type or a value out of range is one :class:`RecipeError` naming the
file, the section, the key and what was expected. The defaults below are the
embedded-default values; a recipe only writes what it changes. CLI overrides (``--seed``,
``--epochs``, ``--threads``, ``--runs``) go through the same checks
(:func:`check_overrides`).
"""

from __future__ import annotations

import copy
import difflib
import tomllib
from pathlib import Path
from typing import Any, Mapping

from landscape.safe_paths import safe_name
from landscape.schema import (Bool, Choice, Field, Float, Int, IntList, RecipeError, Str, check_keys,
                              check_section, defaults_of)

__all__ = ["RecipeError", "check_keys", "check_bits", "load_recipe", "validate_recipe",
           "validate_run", "resolve_run", "check_overrides", "TRAIN_DEFAULTS"]

DATASETS = ("mnist5k", "digits", "fashion-mnist", "cifar10", "cifar100", "pydoc")  # pydoc: text (landscape.text_data)
BUNDLED_DATASETS = ("mnist5k", "digits", "pydoc")   # shipped inside a Python package: no root
MODELS = ("smallcnn", "resnet20", "tinylm")  # tinylm: a language model for `landscape compare` only ([lm])
SOURCES = ("synthetic", "real", "none")
REDUCTIONS = ("batchmean", "mean")
GI_FORMS = ("official", "buffer")
ZERO_POINTS = ("integral", "float")
MIN_BITS, MAX_BITS = 2, 16
MAX_SEED = 2**63 - 1    # torch.manual_seed takes a signed 64-bit integer
MAX_BATCH = 1 << 20     # samples in one batch: more never fits a machine, and is a typo

TOP_FIELDS = {
    "name": Str(""),                 # default: the file's stem
    "description": Str(""),
    "seed": Int(0, lo=0, hi=MAX_SEED),  # the seed `train` uses when --seed is not given
    "seeds": Field("int_list", [], lo=0, hi=MAX_SEED, nonempty=True, unique=True),  # the seeds the pipeline trains; default [seed]
    "threads": Int(1, lo=1, hi=4096),  # torch.set_num_threads: same numbers on any machine
    "reproducible": Bool(True),      # pinned AVX2 kernels (landscape.kernels); false = fast, machine-dependent
}
SECTIONS = ("data", "model", "quant", "teacher", "train", "runs", "analysis", "figures", "compare", "lm")
DATA_FIELDS = {
    "name": Choice("mnist5k", DATASETS),
    "root": Str(""),                 # folder (or .tar.gz for CIFAR); "" = the data set's default
    "test_fraction": Float(0.2, 0.01, 0.9),  # held-out share for mnist5k and digits
    "split_seed": Int(0, lo=0),      # seeded stratified split; fixed across run seeds on purpose
}
MODEL_FIELDS = {
    "name": Choice("smallcnn", MODELS),
    "width": Int(16, lo=1, hi=4096),  # channels of the first conv (smallcnn: then 2x, 4x)
}
QUANT_FIELDS = {
    "w_bits": Int(4, MIN_BITS, MAX_BITS),
    "a_bits": Int(4, MIN_BITS, MAX_BITS),
    "act_momentum": Float(0.9, 0.0, 1.0),        # EMA of the activation range during warm-up
    "weight_zero_point": Choice("integral", ZERO_POINTS),  # integral: the official grid
    # the quantizers: a built-in name or "package.module:Name" (checked by check_quantizers).
    # Left out of the resolved recipe while "uniform", so a default run's config (and its hash,
    # and every checkpoint of it) is what it was before these keys existed.
    "weight": Str("uniform"),
    "act": Str("uniform"),
}
QUANTIZER_KEYS = ("weight", "act")
TEACHER_FIELDS = {
    "epochs": Int(8, lo=1),
    "batch_size": Int(128, lo=1, hi=MAX_BATCH),
    "lr": Float(0.1, 0.0, 10.0, lo_open=True),   # SGD, Nesterov momentum, cosine decay to 0
    "momentum": Float(0.9, 0.0, 1.0),
    "weight_decay": Float(5e-4, 0.0, 1.0),
    "weights": Str(""),   # a pretrained state_dict (ours or pytorchcv's resnet20_cifar*): no training
}
TRAIN_FIELDS = {
    "source": Choice("synthetic", SOURCES),   # generator | real training data (KD) | none (PTQ)
    "epochs": Int(12, lo=1),          # all epochs, the generator-only warm-up included
    "iters_per_epoch": Int(30, lo=1),
    "batch_size": Int(128, lo=1, hi=MAX_BATCH),
    "warmup_epochs": Int(2, lo=0),    # generator-only epochs (student frozen, ranges EMA)
    "lr": Float(1e-3, 0.0, 1e6),              # student SGD
    "momentum": Float(0.9, 0.0, 1.0),
    "nesterov": Bool(True),
    "weight_decay": Float(0.0, 0.0, 1e6),
    "milestones": IntList([], lo=1),          # lr (and generator lr, and rho) x gamma at these epochs
    "gamma": Float(0.1, 0.0, 1e6),
    "ce_scale": Float(1.0, 0.0, 1e6),         # student loss = ce_scale * CE + kd_scale * T^2 KL
    "kd_scale": Float(1.0, 0.0, 1e6),
    "temperature": Float(20.0, 1e-3, 1e4),
    "kl_reduction": Choice("batchmean", REDUCTIONS),  # batchmean (true KL) | mean (official AIT)
    "gi": Bool(False),                        # gradient inundation on every quantized weight
    "gi_form": Choice("official", GI_FORMS),  # official: kappa scales the step only; buffer: ablation
    "rho": Float(1e-3, 0.0, 1.0),             # GI target crossing fraction
    "gi_warmup_epochs": Int(1, lo=0),  # official: the first student epoch, kappa <= 128
    "kappa_max_warmup": Float(128.0, 1.0, 1e12),
    "kappa_max": Float(2.0**20, 1.0, 1e12),   # safety cap afterwards (official: none); logged if it binds
    "bisect_steps": Int(5, lo=0, hi=64),
    "latent_dim": Int(64, lo=1),      # generator
    "gen_width": Int(128, lo=1),      # generator channels (GDFQ: 128)
    "gen_lr": Float(1e-3, 0.0, 1e6),          # Adam, betas (0.5, 0.999)
    "bns_scale": Float(0.1, 0.0, 1e6),
    "calib_batches": Int(4, lo=1),    # PTQ calibration batches (real training data)
    "analysis_batches": Int(2, lo=1),  # fixed batches kept in every checkpoint
    "analysis_batch_size": Int(128, lo=1, hi=MAX_BATCH),  # <= batch_size (checked per run)
}
#: keys a [runs.<name>] table may set: every [train] key and the [quant] keys but act_momentum
RUN_QUANT_KEYS = ("w_bits", "a_bits", "weight_zero_point") + QUANTIZER_KEYS
RUN_FIELDS = {**TRAIN_FIELDS, **{k: QUANT_FIELDS[k] for k in RUN_QUANT_KEYS}}
SECTION_FIELDS = {"data": DATA_FIELDS, "model": MODEL_FIELDS, "quant": QUANT_FIELDS,
                  "teacher": TEACHER_FIELDS, "train": TRAIN_FIELDS}
TRAIN_DEFAULTS = defaults_of(TRAIN_FIELDS)
RUN_KEYS = set(TRAIN_FIELDS)


def check_bits(bits: Any, where: str) -> int:
    """Bit-widths are integers in [2, 16]; anything else is one clear error."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise RecipeError(f"{where} = {bits!r} is out of range; bits must be an integer "
                          f"from {MIN_BITS} to {MAX_BITS}")
    return bits


def check_quantizers(section: dict, where: str, drop_default: bool = True) -> dict:
    """Check ``weight``/``act`` of a [quant] or [runs.*] table (a built-in name, or
    "package.module:Name" that imports); with ``drop_default`` drop them where they are
    "uniform" (the default; a run's explicit "uniform" overrides [quant], so it stays)."""
    from landscape.quant.interface import resolve_quantizer
    from landscape.quant.errors import QuantizerError

    for key in QUANTIZER_KEYS:
        if key not in section:
            continue
        if section[key] == "uniform":
            if drop_default:
                del section[key]
            continue
        try:
            resolve_quantizer(section[key], key)
        except QuantizerError as exc:
            raise RecipeError(f"{where} {exc}") from None
    return section


def validate_recipe(raw: Mapping[str, Any], source: str = "<recipe>") -> dict:
    """Check a raw recipe dict and fill in defaults; returns a new dict."""
    if not isinstance(raw, Mapping):
        raise RecipeError(f"recipe {source} must be a TOML table")
    check_keys(raw, set(TOP_FIELDS) | set(SECTIONS), f"recipe {source}")
    top = check_section({k: v for k, v in raw.items() if k in TOP_FIELDS}, TOP_FIELDS, f"{source}:")
    recipe: dict[str, Any] = {**top, "name": top["name"] or Path(source).stem or "recipe"}
    # the recipe name and each run name become one folder level under --out
    safe_name(recipe["name"], f"{source}: name" if top["name"] else f"recipe {source}: its file name's stem")
    if not recipe["seeds"]:
        recipe["seeds"] = [recipe["seed"]]
    for section, fields in SECTION_FIELDS.items():
        recipe[section] = check_section(raw.get(section, {}), fields, f"{source}: [{section}]")
    check_quantizers(recipe["quant"], f"{source}: [quant]")
    data = recipe["data"]
    if data["root"] and data["name"] in BUNDLED_DATASETS:
        raise RecipeError(f"{source}: [data] root = {data['root']!r} has no effect: {data['name']} "
                          "ships inside a Python package; remove the key")

    runs = raw.get("runs", {})
    if not isinstance(runs, Mapping) or (not runs and "compare" not in raw):  # `landscape compare` trains no run
        raise RecipeError(f"{source}: a recipe needs at least one [runs.<name>] table")
    if runs and recipe["model"]["name"] == "tinylm":
        raise RecipeError(f"{source}: [model] name = \"tinylm\" is a language model, which only `landscape compare` "
                          "runs (the trainer's runs are for image classifiers); remove the [runs.*] tables")
    recipe["runs"] = {}
    for name, overrides in runs.items():
        where = f"{source}: [runs.{name}]"
        safe_name(name, f"{source}: the run name of [runs.{name!r}]")
        recipe["runs"][name] = check_quantizers(check_section(overrides, RUN_FIELDS, where, defaults=False),
                                                  where, drop_default=False)
        validate_run(resolve_run(recipe, name), where)
    # the analyzers' sections travel untouched; they check them with landscape.schema
    for section in ("analysis", "figures", "compare", "lm"):  # [compare], [lm]: landscape.compare.settings checks them
        if section in raw:
            if not isinstance(raw[section], Mapping):
                raise RecipeError(f"{source}: [{section}] must be a table")
            recipe[section] = copy.deepcopy(dict(raw[section]))
    return recipe


def validate_run(run: Mapping[str, Any], where: str) -> None:
    """The checks that involve two keys of a resolved run (each key alone is the schema's)."""
    if run["source"] != "none" and run["warmup_epochs"] >= run["epochs"]:
        raise RecipeError(f"{where}: warmup_epochs ({run['warmup_epochs']}) must be smaller "
                          f"than epochs ({run['epochs']}) or the student never trains")
    if run["gi"] and run.get("weight", "uniform") != "uniform":
        raise RecipeError(f"{where}: gi = true needs weight = 'uniform' (gradient inundation counts crossings "
                          f"of the official grid's integer codes), not weight = {run['weight']!r}")
    if run.get("weight", "uniform") != "uniform" and run["weight_zero_point"] != "integral":
        raise RecipeError(f"{where}: weight_zero_point = {run['weight_zero_point']!r} applies to the uniform "
                          f"weight quantizer only, not to weight = {run['weight']!r}; remove it")
    if run["source"] != "none" and run["ce_scale"] == 0 and run["kd_scale"] == 0:
        raise RecipeError(f"{where}: ce_scale = kd_scale = 0 gives the student no loss: it would train "
                          "nothing; set ce_scale or kd_scale > 0 (or source = \"none\" for PTQ)")
    # the analysis batches are the first samples of the first training (or calibration) batches
    if run["analysis_batch_size"] > run["batch_size"]:
        raise RecipeError(f"{where}: analysis_batch_size ({run['analysis_batch_size']}) is larger than "
                          f"batch_size ({run['batch_size']}): analysis batches are the first samples of "
                          "the training batches; set analysis_batch_size <= batch_size")
    steps, what = ((run["calib_batches"], "calib_batches") if run["source"] == "none"
                   else (run["iters_per_epoch"], "iters_per_epoch"))
    if run["analysis_batches"] > steps:
        raise RecipeError(f"{where}: analysis_batches ({run['analysis_batches']}) is larger than {what} "
                          f"({steps}): they are kept from the first batches of an epoch; set "
                          f"analysis_batches <= {what}")


def check_overrides(seed: Any = None, epochs: Any = None, threads: Any = None,
                    runs: Any = None, data_root: Any = None, data_name: str | None = None) -> None:
    """CLI flags through the recipe's schema: ``--seed`` as the top-level seed, ``--epochs`` as
    [train] epochs, ``--threads`` as threads, ``--runs`` a non-empty list of names (each then
    checked against the recipe by :func:`resolve_run`), ``--data-root`` only where it is used."""
    if seed is not None:
        TOP_FIELDS["seed"].check(seed, "--seed")
    if epochs is not None:
        TRAIN_FIELDS["epochs"].check(epochs, "--epochs")
    if threads is not None:
        TOP_FIELDS["threads"].check(threads, "--threads")
    if runs is not None and (isinstance(runs, str) or not all(isinstance(r, str) for r in runs)
                             or not list(runs)):
        raise RecipeError(f"--runs = {runs!r}; expected one or more run names")
    if data_root and data_name in BUNDLED_DATASETS:
        raise RecipeError(f"--data-root {data_root} has no effect: {data_name} ships inside a "
                          "Python package; drop the flag")


def resolve_run(recipe: Mapping[str, Any], name: str) -> dict:
    """The full config of one run: [train] defaults, the recipe's [quant] keys, then the run's
    overrides (``weight``/``act`` only where not "uniform": absent means the default)."""
    if name not in recipe["runs"]:
        close = difflib.get_close_matches(name, list(recipe["runs"]), n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"recipe '{recipe['name']}' has no run '{name}'{hint} "
                          f"(runs: {', '.join(recipe['runs'])})")
    run = copy.deepcopy(recipe["train"])
    for key in RUN_QUANT_KEYS:
        if key in recipe["quant"]:
            run[key] = recipe["quant"][key]
    run.update(copy.deepcopy(recipe["runs"][name]))
    for key in QUANTIZER_KEYS:
        if run.get(key) == "uniform":
            del run[key]
    run["name"] = name
    return run


def load_recipe(path: str | Path) -> dict:
    """Read and check a recipe TOML; unknown keys and out-of-range values are one clear error."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder, not a recipe file; point at a TOML recipe "
                          "such as analyses/default.toml")
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist; recipes live in analyses/ "
                          "(e.g. analyses/default.toml)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not a text file (not UTF-8); point at a TOML "
                          "recipe such as analyses/default.toml") from None
    except OSError as exc:
        raise RecipeError(f"recipe {path} cannot be read ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {path} is not valid TOML: {exc}") from None
    recipe = validate_recipe(raw, str(path))
    recipe["path"] = str(path)
    return recipe
