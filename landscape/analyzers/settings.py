"""Analysis settings: the schema of a recipe's ``[analysis]`` section, its defaults, validation.

A recipe may set, under ``[analysis]``::

    max_batches = 2          # stored analysis batches used per checkpoint (0: all of them)
    losses = ["ce", "kl"]    # which losses the per-checkpoint analyses evaluate

    [analysis.trace]         # one sub-table per analysis; every key optional
    runs = ["kd", "gdfq"]    # run names this analysis applies to (default: every run given)
    epochs = "all"           # "all" | "last" | "first" | N evenly spaced | [e1, e2, ...]
    max_matvecs = 20
    ...

Every key is checked for type and range by the same schema as the rest of a recipe
(:mod:`landscape.schema`): a typo names the closest key, a wrong type says what was expected.
The defaults are cheap on purpose (the embedded default must be analysed in minutes on two
CPU cores): two analysis batches, 20 Hutchinson probes, 20 power iterations, the density only
at the last epoch, eigenpairs and slices at four epochs. Every estimate carries its standard
error or residual and a ``converged`` flag, so the table says when this is not enough; a full
reproduction raises them.
"""

from __future__ import annotations

from typing import Any, Mapping

from landscape.analyzers._common import AnalysisError, closest
from landscape.schema import (Bool, Choice, Epochs, Float, Int, RecipeError, StrList, check_keys, check_section,
                              defaults_of)

__all__ = ["ANALYSES", "SCHEMA", "DEFAULTS", "SLICE_SCALES", "SLICE_KINDS", "CURVATURES", "PLACEMENT_KEYS",
           "resolve_settings", "cache_settings", "check_analyses"]

ANALYSES = ("cosine", "trace", "eigen", "density", "interepoch", "crossings")
SLICE_SCALES = ("grad_along_e", "grad_norm", "unit")
#: The 1-D slices the eigen analysis can draw along e: the paper's (re-quantized at every k,
#: step k·e·ĝ), the same step with rounding offsets frozen at θ (the function whose Hessian the
#: STE reports), and a re-quantized slice with a unit step k·e (the same step for every loss,
#: for the scale-free comparison).
SLICE_KINDS = ("requantized", "frozen", "requantized_unit")
CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher")

#: Keys that choose *where* an analysis runs, not *what* it computes: not part of cache keys.
PLACEMENT_KEYS = ("runs", "epochs")


def _placement(epochs: Any = "all") -> dict:
    return {"runs": StrList(None, optional=True), "epochs": Epochs(epochs)}


SCHEMA: dict[str, Any] = {
    "max_batches": Int(2, lo=0),
    "losses": StrList(["ce", "kl"], choices=("ce", "kl"), nonempty=True),
    "cosine": {**_placement(), "per_layer": Bool(True)},
    "trace": {**_placement(), "method": Choice("hutchinson", ("hutchinson", "hutch++")),
              "max_matvecs": Int(30, lo=3), "rtol": Float(0.15, lo=0.0, lo_open=True, optional=True),
              "seed": Int(0, lo=0), "per_layer": Bool(False), "curvature": Choice("hessian", CURVATURES)},
    "eigen": {**_placement(4), "method": Choice("lanczos", ("lanczos", "power")),
              "tol": Float(1e-3, lo=0.0, lo_open=True), "max_iter": Int(30, lo=1), "seed": Int(0, lo=0),
              "n_points": Int(21, lo=3), "k_max": Float(0.5, lo=0.0, lo_open=True),
              "scale": Choice("grad_along_e", SLICE_SCALES),
              "slices": StrList(list(SLICE_KINDS), choices=SLICE_KINDS),
              "curvature": Choice("hessian", CURVATURES)},
    "density": {**_placement("last"), "n_runs": Int(2, lo=1), "n_steps": Int(20, lo=1),
                "grid_points": Int(400, lo=2), "seed": Int(0, lo=0),
                "curvature": StrList(["hessian"], choices=CURVATURES, nonempty=True)},
    "interepoch": {**_placement(), "loss": Choice("kl", ("ce", "kl")), "per_layer": Bool(True), "fixed_batches": Bool(True)},
    "crossings": _placement(),
}

DEFAULTS: dict[str, Any] = {k: (defaults_of(v) if isinstance(v, dict) else v.default) for k, v in SCHEMA.items()}


def resolve_settings(settings: Mapping | None = None, where: str = "[analysis]") -> dict:
    """Defaults overlaid with ``settings`` (a recipe's ``[analysis]`` table), validated."""
    top = {k: f for k, f in SCHEMA.items() if k not in ANALYSES}
    given = dict(settings or {})
    if settings is not None and not isinstance(settings, Mapping):
        raise AnalysisError(f"{where} must be a table of settings, got {type(settings).__name__}")
    try:
        check_keys(given, SCHEMA, where)
        out = check_section({k: v for k, v in given.items() if k not in ANALYSES}, top, where)
        for name in ANALYSES:
            out[name] = check_section(given.get(name, {}), SCHEMA[name], f"{where[:-1]}.{name}]")
    except RecipeError as exc:
        raise AnalysisError(str(exc)) from None
    return out


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
