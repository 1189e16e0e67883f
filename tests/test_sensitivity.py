"""landscape.sensitivity: layer_damage against a direct evaluation and the exact Hessian block
(torch.func, float64), for the built-in quantizer and for a quantizer written here; and
allocate_bits against brute force."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import make_batches, make_model
from landscape.losses import cross_entropy, kl_to_teacher
from landscape.quant import quantize_model
from landscape.sensitivity import SensitivityError, allocate_bits, allocation_size, forward_weight, layer_damage


class Pow2(nn.Module):
    """A power-of-two weight quantizer written here: ŵ = sign(w)·2^clamp(round(log2|w|), e_max − 2^(b−1) + 1, e_max),
    e_max = round(log2 max|w|), identity STE."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, w):
        e_max = torch.round(torch.log2(w.detach().abs().max()))
        e = torch.round(torch.log2(w.detach().abs().clamp_min(1e-30))).clamp(e_max - 2 ** (self.bits - 1) + 1, e_max)
        return w + (torch.sign(w.detach()) * 2.0 ** e - w).detach()


class ForeignLinear(nn.Linear):
    def forward(self, x):
        return nn.functional.linear(x, self.wq(self.weight), self.bias)


class ForeignConv(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.wq(self.weight), self.bias)


def foreign_quantize(model: nn.Module, bits: int) -> nn.Module:
    """A quantized copy in the style of a user's own code: each layer holds its quantizer as ``wq``."""
    q = copy.deepcopy(model)
    for m in q.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            m.__class__ = ForeignLinear if type(m) is nn.Linear else ForeignConv
            m.wq = Pow2(bits)
    return q


def direct(model, loss_fn, batches, layer, weight):
    """Size-weighted mean loss with only ``layer``'s weight set to ``weight`` (functional_call)."""
    params = {**dict(model.named_parameters()), f"{layer}.weight": weight}
    total = sum(b[0].shape[0] for b in batches)
    return sum(b[0].shape[0] * loss_fn(lambda x: functional_call(model, params, (x,)), b) for b in batches) / total


def check_against_exact(model, quantized, loss_fn, batches, expected_layers):
    table = layer_damage(model, quantized, loss_fn, batches, trace_matvecs=200)
    assert list(table["layer"]) == expected_layers
    qmods = dict(quantized.named_modules())
    mmods = dict(model.named_modules())
    base = float(direct(model, loss_fn, batches, expected_layers[0], mmods[expected_layers[0]].weight.detach()).detach())
    for row in table.itertuples():
        w = mmods[row.layer].weight.detach()
        w_hat = forward_weight(qmods[row.layer])
        delta = (w_hat - w).reshape(-1)
        assert delta.abs().max() > 1e-3  # the quantizer really moved this layer
        f = lambda flat: direct(model, loss_fn, batches, row.layer, flat.view_as(w))  # noqa: E731
        g = torch.func.grad(f)(w.reshape(-1)).detach()
        H = torch.func.hessian(f)(w.reshape(-1)).detach()
        assert row.n_params == w.numel()
        assert row.loss == pytest.approx(base, abs=1e-12)
        assert row.measured == pytest.approx(float(f(w_hat.reshape(-1)).detach()) - base, abs=1e-8)
        assert row.first_order == pytest.approx(float(g @ delta), abs=1e-8)
        assert row.second_order == pytest.approx(0.5 * float(delta @ H @ delta), abs=1e-8)
        assert row.taylor == pytest.approx(row.first_order + row.second_order, abs=1e-12)
        exact_proxy = 0.5 * float(delta.pow(2).mean()) * float(torch.trace(H))
        assert 0 < row.trace_proxy_stderr < abs(exact_proxy)
        assert abs(row.trace_proxy - exact_proxy) < 5 * row.trace_proxy_stderr
    return table


def test_layer_damage_builtin_quantizer_matches_exact(one_thread):
    model = make_model(0)
    batches = make_batches([5, 3])
    quantized = quantize_model(model, 3, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = check_against_exact(model, quantized, cross_entropy(), batches, ["conv", "fc"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left as it was
    assert all(p.grad is None for p in model.parameters())
    # at 3 bits the Taylor model is close but not exact: the table must not be trivially equal
    assert (table["measured"] != table["taylor"]).all()


def test_layer_damage_own_quantizer_class_matches_exact(one_thread):
    model, teacher = make_model(0), make_model(123)
    batches = make_batches([4, 4, 2], seed=3)
    check_against_exact(model, foreign_quantize(model, 3), kl_to_teacher(teacher, 2.0), batches, ["conv", "fc"])


def test_layer_damage_params_selects_layers_and_refuses_unknown(one_thread):
    model = make_model(0)
    batches = make_batches([4])
    quantized = foreign_quantize(model, 4)
    table = layer_damage(model, quantized, cross_entropy(), batches, params=["fc.weight"], trace_matvecs=4)
    assert list(table["layer"]) == ["fc"]
    with pytest.raises(SensitivityError, match="'bn'.*quantized layers: conv, fc"):
        layer_damage(model, quantized, cross_entropy(), batches, params=["bn"])
    with pytest.raises(SensitivityError, match="no quantized weight layer"):
        layer_damage(model, copy.deepcopy(model), cross_entropy(), batches)


def test_layer_damage_of_a_minimum_has_no_first_order_term(one_thread):
    """KL to itself: the float model is a minimum (L = 0, g = 0), so measured ≈ second_order ≥ 0."""
    model = make_model(0)
    batches = make_batches([6])
    teacher = copy.deepcopy(model).requires_grad_(False)
    table = layer_damage(model, foreign_quantize(model, 6), kl_to_teacher(teacher, 1.0), batches, trace_matvecs=8)
    assert table["loss"].abs().max() < 1e-12
    assert table["first_order"].abs().max() < 1e-10
    assert (table["second_order"] > 0).all()
    np.testing.assert_allclose(table["measured"], table["second_order"], rtol=0.05)


# ----------------------------------------------------------------------------- allocate_bits


def brute_force(table: pd.DataFrame, budget: float) -> float:
    layers = list(dict.fromkeys(table["layer"]))
    n = table.groupby("layer")["n_params"].first()
    options = [table[table["layer"] == l][["bits", "cost"]].to_numpy() for l in layers]
    best = np.inf
    for combo in itertools.product(*options):
        size = sum(b * n[l] for l, (b, _) in zip(layers, combo))
        if size <= budget * n.sum() + 1e-9:
            best = min(best, sum(c for _, c in combo))
    return best


@pytest.mark.parametrize("seed", range(25))
def test_allocate_bits_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(2, 6))
    bits = sorted(rng.choice([2, 3, 4, 6, 8], size=int(rng.integers(2, 5)), replace=False).tolist())
    sizes = rng.integers(1, 500, n_layers)
    rows = [{"layer": f"l{i}", "bits": b, "n_params": int(sizes[i]),
             "cost": float(rng.standard_normal() + 10 * rng.random() / b)} for i in range(n_layers) for b in bits]
    table = pd.DataFrame(rows).sample(frac=1, random_state=seed)  # row order must not matter
    budget = float(rng.uniform(bits[0], bits[-1]))
    alloc = allocate_bits(table, budget)
    assert list(alloc) == list(dict.fromkeys(table["layer"]))
    n = dict(zip(table["layer"], table["n_params"]))
    assert allocation_size(alloc, n) <= budget + 1e-12
    cost = sum(float(table[(table["layer"] == l) & (table["bits"] == b)]["cost"].iloc[0]) for l, b in alloc.items())
    assert cost == pytest.approx(brute_force(table, budget), abs=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_allocate_bits_is_exact_whatever_the_scale_of_the_costs(seed):
    """HiGHS's absolute gap is 1e-6: costs of 1e-8 (8-bit damages) must still give the optimum."""
    rng = np.random.default_rng(100 + seed)
    bits = [2, 3, 4, 8]
    rows = [{"layer": f"l{i}", "bits": b, "n_params": int(rng.integers(1, 500)), "cost": 1e-8 * float(rng.random() / b)}
            for i in range(4) for b in bits]
    table = pd.DataFrame(rows)
    table["n_params"] = table.groupby("layer")["n_params"].transform("first")
    alloc = allocate_bits(table, 3.5)
    cost = sum(float(table[(table["layer"] == l) & (table["bits"] == b)]["cost"].iloc[0]) for l, b in alloc.items())
    assert cost == pytest.approx(brute_force(table, 3.5), rel=1e-9, abs=0)


def test_allocate_bits_spends_bits_where_the_cost_is():
    table = pd.DataFrame([{"layer": l, "bits": b, "n_params": 100, "cost": c / b}
                          for l, c in (("a", 1.0), ("b", 100.0)) for b in (2, 8)])
    assert allocate_bits(table, 5) == {"a": 2, "b": 8}
    assert allocate_bits(table, 8) == {"a": 8, "b": 8}
    assert allocate_bits(table, 2) == {"a": 2, "b": 2}


def test_allocate_bits_refuses_bad_input():
    table = pd.DataFrame({"layer": ["a", "a"], "bits": [2, 4], "n_params": [10, 10], "cost": [1.0, 0.5]})
    with pytest.raises(SensitivityError, match="infeasible.*needs 2; raise the budget"):
        allocate_bits(table, 1.5)
    with pytest.raises(SensitivityError, match="lacks the column"):
        allocate_bits(table.drop(columns="cost"), 4)
    with pytest.raises(SensitivityError, match="two rows for layer 'a'"):
        allocate_bits(pd.concat([table, table]), 4)
    with pytest.raises(SensitivityError, match="non-finite"):
        allocate_bits(table.assign(cost=[1.0, float("nan")]), 4)
    with pytest.raises(SensitivityError, match="one size"):
        allocate_bits(table.assign(n_params=[10, 11]), 4)


def test_layer_damage_through_the_quantizer_interface(one_thread):
    """The class written here plugged into quantize_model (weights only), and a built-in LSQ:
    δ is the forward weight of the interface's layer, checked against the exact block."""
    model = make_model(0)
    batches = make_batches([5, 3])
    check_against_exact(model, quantize_model(model, 3, None, weight=Pow2), cross_entropy(), batches, ["conv", "fc"])
    lsq = quantize_model(model, 3, None, weight="lsq")
    table = check_against_exact(model, lsq, cross_entropy(), batches, ["conv", "fc"])
    assert "wq" not in " ".join(table["layer"])  # LSQ's step is not a layer of the table
