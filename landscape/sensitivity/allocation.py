r"""Mixed-precision bit allocation under a size budget, solved exactly.

Given, for every layer l and every candidate bit width b, a cost c_{l,b} (a predicted or
measured loss increase) and the layer's size n_l, choose one width per layer:

    minimise    Σ_l Σ_b c_{l,b} x_{l,b}
    subject to  Σ_b x_{l,b} = 1                      for every layer l
                Σ_l Σ_b b · n_l · x_{l,b} ≤ ⌊B · Σ_l n_l⌋    (average bits per weight ≤ B)
                x_{l,b} ∈ {0, 1}

a multiple-choice knapsack, the integer programme of HAWQ-V3 (Yao et al., ICML 2021). It is
solved by ``scipy.optimize.milp`` (HiGHS branch and bound) with a zero optimality gap, so the
answer is a true optimum, not a greedy approximation: the costs are shifted per layer and
scaled to [0, 1] first, so the solver's absolute gap (1e-6) is 1e-6 of the cost range at any
scale of the costs. The size constraint is in integers (bits × weights), so no rounding can let
an allocation exceed the budget.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import Bounds, LinearConstraint, milp

from landscape.sensitivity.errors import SensitivityError

__all__ = ["allocate_bits", "allocation_size"]

_REQUIRED = ("layer", "bits", "cost", "n_params")


def _check_table(table: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise SensitivityError(f"allocate_bits: table must be a pandas DataFrame with columns {list(_REQUIRED)}, "
                               f"got {type(table).__name__}")
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise SensitivityError(f"allocate_bits: table lacks the column(s) {missing}; it needs one row per "
                               f"(layer, bits) with columns {list(_REQUIRED)}")
    if table.empty:
        raise SensitivityError("allocate_bits: table is empty; give one row per (layer, bits)")
    t = table[list(_REQUIRED)].copy()
    if t.duplicated(["layer", "bits"]).any():
        dup = t[t.duplicated(["layer", "bits"])].iloc[0]
        raise SensitivityError(f"allocate_bits: table has two rows for layer {dup['layer']!r} at {dup['bits']} "
                               "bits; average the costs first (e.g. over seeds) so each (layer, bits) is one row")
    for col in ("bits", "n_params", "cost"):
        values = pd.to_numeric(t[col], errors="coerce")
        if values.isna().any() or not np.isfinite(values.to_numpy(float)).all():
            raise SensitivityError(f"allocate_bits: column {col!r} holds a missing or non-finite value; every "
                                   "row needs a finite number")
        t[col] = values
    if (t["bits"] <= 0).any() or (t["bits"] != t["bits"].round()).any():
        raise SensitivityError("allocate_bits: column 'bits' must hold positive integers")
    if (t["n_params"] <= 0).any() or (t["n_params"] != t["n_params"].round()).any():
        raise SensitivityError("allocate_bits: column 'n_params' must hold positive integers")
    sizes = t.groupby("layer", sort=False)["n_params"].nunique()
    if (sizes > 1).any():
        raise SensitivityError(f"allocate_bits: layer {sizes[sizes > 1].index[0]!r} has different n_params on "
                               "different rows; a layer has one size")
    return t


def allocation_size(allocation: Mapping[str, int], n_params: Mapping[str, int]) -> float:
    """The average bits per weight of an allocation: Σ b_l n_l / Σ n_l."""
    total = sum(int(n_params[l]) for l in allocation)
    return sum(int(b) * int(n_params[l]) for l, b in allocation.items()) / total


def allocate_bits(table: pd.DataFrame, budget: float) -> dict[str, int]:
    r"""``{layer: bits}`` minimising Σ cost subject to Σ bits·n_params ≤ budget·Σ n_params, exactly.

    ``table``: one row per (layer, candidate bits) with columns ``layer``, ``bits``, ``cost``
    (any real number; lower is better) and ``n_params`` (the layer's size, the same on all its
    rows). ``budget``: the largest allowed average bits per weight. Layers keep the table's
    order. Raises :class:`SensitivityError` for a malformed table or a budget below the
    smallest possible size (every layer at its fewest bits). Ties between equally costly
    allocations are broken by the solver.
    """
    t = _check_table(table)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise SensitivityError(f"allocate_bits: budget = {budget!r}; give the average bits per weight, e.g. 4")
    layers = list(dict.fromkeys(t["layer"]))
    n = t.groupby("layer", sort=False)["n_params"].first().astype(int)
    total = int(n.sum())
    cap = math.floor(budget * total + 1e-9 * total)
    smallest = int(sum(int(t.loc[t["layer"] == l, "bits"].min()) * int(n[l]) for l in layers))
    if smallest > cap:
        raise SensitivityError(f"allocate_bits: budget = {budget} bits per weight is infeasible: even every layer at "
                               f"its fewest bits needs {smallest / total:.4g}; raise the budget to at least that")
    index = {l: i for i, l in enumerate(layers)}
    # HiGHS stops within an absolute gap of 1e-6 (scipy cannot set it): costs of 1e-8 would all
    # look equal. Shift each layer's costs by its own minimum (one width per layer: the argmin is
    # unchanged) and divide by the largest, so the gap is 1e-6 of the cost range, whatever its scale.
    cost = (t["cost"] - t.groupby("layer", sort=False)["cost"].transform("min")).to_numpy(float)
    if cost.max() > 0:
        cost = cost / cost.max()
    size = (t["bits"].astype(int) * t["layer"].map(n).astype(int)).to_numpy(float)
    choose = np.zeros((len(layers), len(t)))
    choose[t["layer"].map(index).to_numpy(), np.arange(len(t))] = 1.0
    constraints = [LinearConstraint(choose, 1, 1), LinearConstraint(size[None, :], -np.inf, cap)]
    res = milp(cost, constraints=constraints, integrality=np.ones(len(t)), bounds=Bounds(0, 1),
               options={"mip_rel_gap": 0.0, "presolve": False})  # presolve: tiny problems; it prints a debug line
    if res.status != 0 or res.x is None:  # pragma: no cover - feasibility was checked above
        raise SensitivityError(f"allocate_bits: the solver failed ({res.message}) at budget {budget}")
    picked = res.x > 0.5
    chosen = t[picked]
    return {l: int(chosen.loc[chosen["layer"] == l, "bits"].iloc[0]) for l in layers}
