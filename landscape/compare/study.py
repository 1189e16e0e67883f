"""The measurements of one seed: every quantizer at every bit width, its whole-model curvature,
its per-layer damage, and the mixed-precision allocations it leads to.

    tables = study_seed(recipe, settings, seed, root="checkpoints")
    tables["curvature"]    quantizer, bits, seed, loss, metric (trace | lambda_max | loss | accuracy), value, stderr, converged
    tables["sensitivity"]  quantizer, bits, seed, loss, + the columns of landscape.sensitivity.layer_damage
    tables["allocation"]   quantizer, seed, budget, strategy (guided | reversed | uniform | random), draw,
                           avg_bits, accuracy, allocation

The teacher is the recipe's, trained once per seed and cached exactly as ``landscape train``
caches it (:func:`landscape.zsq.teacher.get_teacher`), so ``make figures`` and ``make compare``
share it. Curvature is that of the student (weights *and* activations quantized, through the
quantizer's STE) w.r.t. the float parameters, on fixed real training batches; the per-layer
damage is that of the float teacher with one layer's weight replaced by the student's forward
weight (activations in float); the allocations are evaluated the same way, weight-only: each
layer computes with the forward weight of the student at its allocated width.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from landscape.checkpoints import teacher_from_file
from landscape.curvature import Hessian, mean_loss
from landscape.data import iterate_batches, load_dataset
from landscape.losses import cross_entropy, kl_to_teacher
from landscape.models import evaluate
from landscape.compare.settings import quantizer_pair
from landscape.compare.students import float_names, make_student
from landscape.sensitivity import allocate_bits, allocation_size, layer_damage, quantized_weights

__all__ = ["study_seed", "analysis_batches", "SeedTables"]


class SeedTables(dict):
    """``{table name: DataFrame}`` of one seed; prints as a one-line summary (the job log)."""

    def __str__(self) -> str:
        return ", ".join(f"{name} {len(t)} rows" for name, t in self.items())


def _curvature_rows(student, names, losses, batches, settings, base: dict) -> list[dict]:
    rows = []
    for loss_name, loss_fn in losses.items():
        H = Hessian(student, loss_fn, batches, params=names)
        tr = H.trace(max_matvecs=settings["trace_matvecs"], rtol=settings["trace_rtol"], seed=base["seed"])
        eig = H.eigenpairs(k=1, method="power", max_iter=settings["eigen_iters"], tol=1e-3, seed=base["seed"])
        rows += [{**base, "loss": loss_name, "metric": "trace", "value": tr.value, "stderr": tr.stderr,
                  "converged": tr.converged},
                 {**base, "loss": loss_name, "metric": "lambda_max", "value": float(eig.values[0]),
                  "stderr": float("nan"), "converged": bool(eig.converged)},
                 {**base, "loss": loss_name, "metric": "loss", "value": mean_loss(student, loss_fn, batches),
                  "stderr": float("nan"), "converged": True}]
    return rows


@torch.no_grad()
def _accuracy_with(work: torch.nn.Module, weights: dict[str, torch.Tensor], data) -> float:
    """Test accuracy of ``work`` (the float model) with each named layer's weight replaced."""
    modules = dict(work.named_modules())
    for layer, w in weights.items():
        modules[layer].weight.copy_(w)
    return evaluate(work, data.x_test, data.y_test)


def _permuted(table: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """The cost table with layer ``layers[i]``'s cost curve given to ``order[i]`` (sizes kept)."""
    layers = list(dict.fromkeys(table["layer"]))
    curves = {l: table[table["layer"] == l].set_index("bits")["cost"] for l in layers}
    moved = dict(zip(order, layers))
    return table.assign(cost=[curves[moved[l]][b] for l, b in zip(table["layer"], table["bits"])])


def _allocations(evaluate, forward: dict[int, dict], damage: pd.DataFrame, settings, base,
                 rng: np.random.Generator, metric: str = "accuracy") -> list[dict]:
    """At each budget: the allocation guided by the cost table; the *reversed* one (the cost curve
    of the i-th most sensitive layer given to the i-th least sensitive, sensitivity = cost at the
    fewest bits); ``n_random`` *random* ones (the curves given to a random permutation of the
    layers); and uniform bits where the budget is a width. Every one is the exact optimum of its
    cost table under the same size budget, so all spend the budget alike; each is evaluated by
    ``evaluate({layer: forward[bits][layer]})`` into the column ``metric``."""
    table = damage.rename(columns={settings["cost"]: "cost"})[["layer", "bits", "cost", "n_params"]]
    n = dict(zip(table["layer"], table["n_params"]))
    layers = list(dict.fromkeys(table["layer"]))
    fewest = table[table["bits"] == table["bits"].min()].set_index("layer")["cost"]
    ranked = sorted(layers, key=lambda l: -fewest[l])
    reversed_table = _permuted(table, [ranked[::-1][ranked.index(l)] for l in layers])
    rows = []

    def record(budget, strategy, draw, alloc):
        value = evaluate({l: forward[b][l] for l, b in alloc.items()})
        rows.append({**base, "budget": budget, "strategy": strategy, "draw": draw,
                     "avg_bits": allocation_size(alloc, n), metric: value,
                     "allocation": json.dumps(alloc, sort_keys=False)})

    perms = [list(rng.permutation(layers)) for _ in range(settings["n_random"])]
    for budget in settings["budgets"]:
        record(budget, "guided", 0, allocate_bits(table, budget))
        record(budget, "reversed", 0, allocate_bits(reversed_table, budget))
        if float(budget).is_integer() and int(budget) in forward:
            record(budget, "uniform", 0, {l: int(budget) for l in layers})
        for draw, perm in enumerate(perms):
            record(budget, "random", draw, allocate_bits(_permuted(table, perm), budget))
    return rows


def analysis_batches(data, settings: dict, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed real training batches every curvature and damage of ``seed`` is taken on."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    return [b for _, b in zip(range(settings["analysis_batches"]),
                              iterate_batches(data.x_train, data.y_train, settings["analysis_batch_size"], gen))]


def study_seed(recipe: dict, settings: dict, seed: int, root: str | Path = "checkpoints",
               data_root: str | None = None, device: str = "cpu",
               quantizers: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Every measurement of one seed (see the module docstring for the tables), for the
    recipe's quantizers or the given ones; the float teacher's accuracy row comes with the
    first quantizer of the recipe. The numbers do not depend on how quantizers are split."""
    from landscape.zsq.teacher import get_teacher

    torch.manual_seed(seed)
    d = recipe["data"]
    data = load_dataset(d["name"], data_root or d["root"] or None, d["test_fraction"], d["split_seed"])
    _, t_file = get_teacher(recipe, data, Path(root), seed, device, progress=False)
    teacher = teacher_from_file(t_file, device).requires_grad_(False)
    batches = analysis_batches(data, settings, seed)
    losses = {"ce": cross_entropy(), "kl": kl_to_teacher(teacher, settings["temperature"])}
    float_model = copy.deepcopy(teacher)  # moved layer by layer; the KL target stays the teacher
    teacher_acc = evaluate(teacher, data.x_test, data.y_test)
    a_bits = settings["a_bits"]
    curvature, sensitivity, allocation = [], [], []
    for q in quantizers or settings["quantizers"]:
        weight, act = quantizer_pair(q)  # names quantize_model resolves ("package.module:Name" too)
        forward: dict[int, dict[str, torch.Tensor]] = {}
        for bits in settings["bits"]:
            base = {"quantizer": q, "bits": bits, "seed": seed}
            student = make_student(teacher, weight, act, bits, bits if a_bits == "same" else a_bits, data,
                                   settings, seed)
            names = float_names(student, teacher)
            curvature += _curvature_rows(student, names, losses, batches, settings, base)
            curvature.append({**base, "loss": "none", "metric": "accuracy",
                              "value": evaluate(student, data.x_test, data.y_test), "stderr": float("nan"),
                              "converged": True})
            for loss_name, loss_fn in losses.items():
                table = layer_damage(float_model, student, loss_fn, batches,
                                     trace_matvecs=settings["layer_trace_matvecs"], trace_rtol=settings["trace_rtol"],
                                     seed=seed)
                sensitivity.append(table.assign(quantizer=q, bits=bits, seed=seed, loss=loss_name))
            forward[bits] = dict(quantized_weights(student))
        damage = pd.concat([t for t in sensitivity if t["quantizer"].iloc[0] == q and t["seed"].iloc[0] == seed
                            and t["loss"].iloc[0] == settings["cost_loss"]], ignore_index=True)
        work = copy.deepcopy(teacher)
        allocation += _allocations(lambda weights: _accuracy_with(work, weights, data), forward, damage, settings,
                                   {"quantizer": q, "seed": seed},
                                   np.random.default_rng([seed, settings["quantizers"].index(q)]))
    if settings["quantizers"][0] in (quantizers or settings["quantizers"]):
        curvature.append({"quantizer": "float", "bits": 32, "seed": seed, "loss": "none", "metric": "accuracy",
                          "value": teacher_acc, "stderr": float("nan"), "converged": True})
    sens = pd.concat(sensitivity, ignore_index=True)
    front = ["quantizer", "bits", "seed", "loss", "layer"]
    return SeedTables(curvature=pd.DataFrame(curvature),
                      sensitivity=sens[front + [c for c in sens.columns if c not in front]],
                      allocation=pd.DataFrame(allocation))
