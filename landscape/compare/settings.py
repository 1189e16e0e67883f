"""The ``[compare]`` table of a recipe: which quantizers, bit widths, mode and seeds, checked key
by key like every recipe section (:mod:`landscape.schema`).

    [compare]
    quantizers = ["uniform", "lsq", "pact", "pow2"]   # built-in names or "package.module:Name";
                                                       # "rtn" = uniform; "<name>_g32": per-group weights
    bits = [8, 4, 3, 2]                                # weight bits (and activation bits, see a_bits)
    a_bits = "same"                                    # "same" as the weights, "none" (weights only), or 2..16
    mode = "ptq"                                       # "ptq": calibration only; "qat": short real-data KD
    seeds = [0, 1, 2]                                  # default: the recipe's seeds

A quantizer name sets the weight and the activation quantizer of
``quantize_model(weight=..., act=...)``: a weight-only quantizer (``pow2``, ``dorefa``, a
user's class) keeps uniform activations, an activation-only one (``pact``) keeps uniform
weights (:data:`PAIRS`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from landscape.config import MAX_BITS, MIN_BITS
from landscape.schema import Choice, Float, Int, IntList, RecipeError, Str, StrList, check_section

__all__ = ["COMPARE_FIELDS", "PAIRS", "compare_settings", "quantizer_pair"]

#: name -> (weight quantizer, activation quantizer) given to quantize_model.
PAIRS = {"uniform": ("uniform", "uniform"), "rtn": ("uniform", "uniform"), "lsq": ("lsq", "lsq"), "pact": ("uniform", "pact"),
         "pow2": ("pow2", "uniform"), "dorefa": ("dorefa", "uniform"), "torch_ao": ("torch_ao", "torch_ao")}
COSTS = ("second_order", "taylor", "trace_proxy", "measured")

COMPARE_FIELDS = {
    "quantizers": StrList(["uniform", "lsq", "pact", "pow2"], nonempty=True),
    "bits": IntList([8, 4, 3, 2], lo=MIN_BITS, nonempty=True, unique=True),
    "a_bits": Str("same"),                 # "same" | "none" | an integer 2..16 (as a string or integer)
    "mode": Choice("ptq", ("ptq", "qat")),
    "seeds": IntList([], lo=0, unique=True),     # default: the recipe's seeds
    "calib_batches": Int(4, lo=1),          # PTQ: activation ranges from this many training batches
    "batch_size": Int(128, lo=1),           # calibration and QAT batches
    "qat_steps": Int(100, lo=1),            # QAT: SGD steps of CE + T² KL on real training data
    "qat_lr": Float(1e-3, 0.0, 10.0, lo_open=True),
    "temperature": Float(4.0, 1e-3, 1e4),   # the KL-to-teacher loss (curvature, sensitivity, QAT)
    "analysis_batches": Int(1, lo=1),       # fixed training batches every curvature is taken on
    "analysis_batch_size": Int(128, lo=1),
    "trace_matvecs": Int(20, lo=2),         # Hutchinson probes, whole model (a cap)
    "trace_rtol": Float(0.1, 0.0, 1.0, lo_open=True),  # stop when stderr <= rtol·|trace| (converged)
    "eigen_iters": Int(20, lo=1),           # power iterations for the top eigenvalue
    "layer_trace_matvecs": Int(10, lo=2),   # Hutchinson probes per layer (the trace proxy)
    "budgets": StrList([]),                 # placeholder: checked below as numbers
    "n_random": Int(10, lo=1),              # random allocations per budget and seed
    "cost": Choice("second_order", COSTS),  # what guides the allocation
    "cost_loss": Choice("ce", ("ce", "kl")),
    # language models ([model] name = "tinylm"): the blocks of the per-block damage (a regex whose
    # groups, joined by ".", name a block; a quantized parameter it does not match is its own
    # module's block, e.g. "head"), and how many validation batches of analysis_batch_size
    # windows give every validation loss (students, allocations)
    "blocks": Str(r"blocks\.(\d+)\.(attn|mlp)"),
    "eval_batches": Int(4, lo=1),
}
GROUP_RE = re.compile(r"^(?P<base>.+)_g(?P<group>[1-9]\d*)$")


def _a_bits(value: Any, where: str) -> int | str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not (value in ("same", "none") or value.isdigit()):
        raise RecipeError(f"{where} a_bits = {value!r}; expected \"same\", \"none\" or an integer from "
                          f"{MIN_BITS} to {MAX_BITS}")
    if value.isdigit() and not MIN_BITS <= int(value) <= MAX_BITS:
        raise RecipeError(f"{where} a_bits = {value}; expected an integer from {MIN_BITS} to {MAX_BITS}")
    return None if value == "none" else value if value == "same" else int(value)


def _budgets(value: Any, bits: list[int], where: str) -> list[float]:
    if value is None:  # default: every half bit strictly between the extreme widths, and the integers
        lo, hi = min(bits), max(bits)
        return [x / 2 for x in range(2 * lo + 1, 2 * hi) if x / 2 <= 4 or x % 2 == 0]
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise RecipeError(f"{where} budgets = {value!r}; expected a list of average bits per weight, e.g. [3, 4]")
    bad = [v for v in value if not min(bits) <= v <= max(bits)]
    if bad:
        raise RecipeError(f"{where} budgets {bad} lie outside the bit widths [{min(bits)}, {max(bits)}]; "
                          "an allocation can only average between the fewest and the most bits")
    return sorted(float(v) for v in value)


def split_group(name: str) -> tuple[str, int | None]:
    """``("rtn", 32)`` for ``"rtn_g32"`` (per-group scales along the input dimension, groups of
    32 weights); ``(name, None)`` for a name without the ``_g<N>`` suffix."""
    m = GROUP_RE.match(name)
    return (m["base"], int(m["group"])) if m and ":" not in name else (name, None)


def quantizer_pair(name: str) -> tuple[str, str]:
    """(weight, act) for a quantizer name; a user's ``"package.module:Name"`` quantizes weights;
    a ``_g<N>`` suffix (per-group weights) is that of the name without it."""
    name = split_group(name)[0]
    if name in PAIRS:
        return PAIRS[name]
    if ":" in name:
        return name, "uniform"
    raise RecipeError(f"[compare] quantizers: unknown quantizer {name!r}; built in: {', '.join(PAIRS)}, "
                      "or your own class as \"package.module:Name\"")


def compare_settings(recipe: Mapping, where: str | None = None) -> dict:
    """The recipe's ``[compare]`` table checked, with defaults (``seeds``: the recipe's)."""
    where = where or f"{recipe.get('path', recipe.get('name', '<recipe>'))}: [compare]"
    raw = dict(recipe.get("compare") or {})
    a_bits, budgets = raw.pop("a_bits", "same"), raw.pop("budgets", None)
    out = check_section(raw, COMPARE_FIELDS, where)
    out["bits"] = sorted(out["bits"], reverse=True)
    out["a_bits"] = _a_bits(a_bits, where)
    out["budgets"] = _budgets(budgets, out["bits"], where)
    out["seeds"] = out["seeds"] or list(recipe.get("seeds") or [recipe.get("seed", 0)])
    from landscape.quant.errors import QuantizerError
    from landscape.quant.interface import resolve_quantizer

    if out["mode"] == "qat" and (recipe.get("model") or {}).get("name") == "tinylm":
        raise RecipeError(f"{where} mode = \"qat\" fine-tunes image students only; a language model is compared "
                          "post-training: use mode = \"ptq\"")
    for q in out["quantizers"]:  # a name that cannot be imported fails here, before any teacher trains
        for spec, role in zip(quantizer_pair(q), ("weight", "act")):
            try:
                resolve_quantizer(spec, role, f"{where} quantizers")
            except QuantizerError as exc:
                raise RecipeError(str(exc)) from None
    if len(set(out["quantizers"])) != len(out["quantizers"]):
        raise RecipeError(f"{where} quantizers = {out['quantizers']} names one twice")
    return out
