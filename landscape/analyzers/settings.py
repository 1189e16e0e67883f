"""Analysis settings: the defaults, and validation of a recipe's ``[analysis]`` section.

A recipe may set, under ``[analysis]``::

    max_batches = 2          # stored analysis batches used per checkpoint (0: all of them)
    losses = ["ce", "kl"]    # which losses the per-checkpoint analyses evaluate

    [analysis.trace]         # one sub-table per analysis; every key optional
    runs = ["kd", "gdfq"]    # run names this analysis applies to (default: every run given)
    epochs = "all"           # "all" | "last" | "first" | N evenly spaced | [e1, e2, ...]
    max_matvecs = 20
    ...

The defaults are cheap on purpose (the embedded default must be analysed in minutes on two
CPU cores): two analysis batches (128 samples on the default), 20 Hutchinson probes, 20 power iterations, the density only
at the last epoch, eigenpairs and slices at four epochs. Every estimate carries its standard
error or residual, so the table says when this is not enough; a full reproduction raises them.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from landscape.analyzers._common import AnalysisError, closest

ANALYSES = ("cosine", "trace", "eigen", "density", "interepoch", "crossings")

#: Keys shared by every analysis sub-table.
_COMMON = {"runs": None, "epochs": "all"}

DEFAULTS: dict[str, Any] = {
    "max_batches": 2,
    "losses": ["ce", "kl"],
    "cosine": {**_COMMON, "per_layer": True},
    "trace": {**_COMMON, "method": "hutchinson", "max_matvecs": 20, "rtol": 0.05, "seed": 0,
              "per_layer": False, "curvature": "hessian"},
    "eigen": {**_COMMON, "epochs": 4, "method": "power", "tol": 1e-3, "max_iter": 20, "seed": 0,
              "n_points": 21, "k_max": 0.5, "scale": "grad_along_e",
              "slices": ["requantized", "frozen", "requantized_unit"], "curvature": "hessian"},
    "density": {**_COMMON, "epochs": "last", "n_runs": 2, "n_steps": 20, "grid_points": 400,
                "seed": 0, "curvature": ["hessian"]},
    "interepoch": {**_COMMON, "loss": "kl", "per_layer": True, "fixed_batches": True},
    "crossings": {**_COMMON},
}

#: Keys that choose *where* an analysis runs, not *what* it computes: not part of cache keys.
PLACEMENT_KEYS = ("runs", "epochs")

SLICE_SCALES = ("grad_along_e", "grad_norm", "unit")
#: The 1-D slices the eigen analysis can draw along e: the paper's (re-quantized at every k,
#: step k·e·ĝ), the same step with rounding offsets frozen at θ (the function whose Hessian the
#: STE reports), and a re-quantized slice with a unit step k·e (the same step for every loss,
#: for the scale-free comparison).
SLICE_KINDS = ("requantized", "frozen", "requantized_unit")
CURVATURES = ("hessian", "ggn")


def _check_keys(section: Mapping, allowed, where: str) -> None:
    """Unknown key -> one clear error naming it and the closest allowed key."""
    try:  # the trainer's helper, so recipes fail the same way everywhere
        from landscape.config import check_keys
    except ImportError:  # pragma: no cover - until the trainer's config lands
        check_keys = None
    if check_keys is not None:
        try:
            check_keys(section, allowed, where)
            return
        except (KeyError, ValueError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise AnalysisError(str(msg)) from None
    for key in section:
        if key not in allowed:
            raise AnalysisError(f"unknown key {key!r} in {where}{closest(key, allowed)}; "
                                f"allowed: {', '.join(sorted(allowed))}")


def resolve_settings(settings: Mapping | None = None, where: str = "[analysis]") -> dict:
    """Defaults overlaid with ``settings`` (a recipe's ``[analysis]`` table), validated."""
    out = copy.deepcopy(DEFAULTS)
    if settings is None:
        return out
    if not isinstance(settings, Mapping):
        raise AnalysisError(f"{where} must be a table of settings, got {type(settings).__name__}")
    _check_keys(settings, list(DEFAULTS), where)
    for key, value in settings.items():
        if key in ANALYSES:
            if not isinstance(value, Mapping):
                raise AnalysisError(f"{where}.{key} must be a table, got {value!r}")
            _check_keys(value, list(DEFAULTS[key]), f"{where[:-1]}.{key}]")
            out[key].update(value)
        else:
            out[key] = value
    _validate(out, where)
    return out


def _validate(cfg: dict, where: str) -> None:
    mb = cfg["max_batches"]
    if not isinstance(mb, int) or isinstance(mb, bool) or mb < 0:
        raise AnalysisError(f"{where} max_batches = {mb!r}: expected an integer >= 0 (0 = all)")
    losses = cfg["losses"]
    if not isinstance(losses, (list, tuple)) or not losses:
        raise AnalysisError(f"{where} losses = {losses!r}: expected a non-empty list such as ['ce', 'kl']")
    for name in ANALYSES:
        sub = cfg[name]
        runs = sub["runs"]
        if runs is not None and (isinstance(runs, str) or not isinstance(runs, (list, tuple))):
            raise AnalysisError(f"{where[:-1]}.{name}] runs = {runs!r}: expected a list of run names")
    tr = cfg["trace"]
    if tr["method"] not in ("hutchinson", "hutch++"):
        raise AnalysisError(f"[analysis.trace] method = {tr['method']!r}: expected 'hutchinson' or 'hutch++'"
                            + closest(tr["method"], ["hutchinson", "hutch++"]))
    for name, key in (("trace", "max_matvecs"), ("eigen", "max_iter"), ("eigen", "n_points"),
                      ("density", "n_runs"), ("density", "n_steps"), ("density", "grid_points")):
        v = cfg[name][key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise AnalysisError(f"[analysis.{name}] {key} = {v!r}: expected a positive integer")
    eg = cfg["eigen"]
    if eg["method"] not in ("power", "lanczos"):
        raise AnalysisError(f"[analysis.eigen] method = {eg['method']!r}: expected 'power' or 'lanczos'")
    if eg["scale"] not in SLICE_SCALES:
        raise AnalysisError(f"[analysis.eigen] scale = {eg['scale']!r}: expected one of {SLICE_SCALES}"
                            + closest(eg["scale"], SLICE_SCALES))
    if not float(eg["k_max"]) > 0:
        raise AnalysisError(f"[analysis.eigen] k_max = {eg['k_max']!r}: expected > 0")
    if not isinstance(eg["slices"], (list, tuple)) or any(k not in SLICE_KINDS for k in eg["slices"]):
        raise AnalysisError(f"[analysis.eigen] slices = {eg['slices']!r}: expected a list from {SLICE_KINDS}")
    for name in ("trace", "eigen"):
        if cfg[name]["curvature"] not in CURVATURES:
            raise AnalysisError(f"[analysis.{name}] curvature = {cfg[name]['curvature']!r}: expected one of "
                                f"{CURVATURES}" + closest(cfg[name]["curvature"], CURVATURES))
    dc = cfg["density"]["curvature"]
    if isinstance(dc, str):
        cfg["density"]["curvature"] = dc = [dc]
    if not isinstance(dc, (list, tuple)) or not dc or any(c not in CURVATURES for c in dc):
        raise AnalysisError(f"[analysis.density] curvature = {dc!r}: expected a list from {CURVATURES}")


def cache_settings(cfg: dict, name: str) -> dict:
    """The part of the settings that changes the numbers of analysis ``name`` (its cache key)."""
    sub = {k: v for k, v in cfg[name].items() if k not in PLACEMENT_KEYS}
    return {"max_batches": cfg["max_batches"], "losses": list(cfg["losses"]), name: sub}


def check_analyses(analyses) -> list[str]:
    """Validate analysis names (None = all); unknown -> error with the closest name."""
    if analyses is None:
        return list(ANALYSES)
    if isinstance(analyses, str):
        analyses = [analyses]
    out: list[str] = []
    for name in analyses:
        if name == "all":
            return list(ANALYSES)
        if name not in ANALYSES:
            raise AnalysisError(f"unknown analysis {name!r}{closest(name, ANALYSES)}; "
                                f"choose from {', '.join(ANALYSES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise AnalysisError(f"no analysis chosen; choose from {', '.join(ANALYSES)}")
    return out
