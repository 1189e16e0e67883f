"""Gradient inundation: the κ search of METHOD.md §3 and the optimizer built on it."""

import pytest
import torch
from torch import nn

from landscape.quant import quantize_model
from landscape.quant.functional import weight_codes
from landscape.zsq.gi import InundatedSGD, param_groups, search_kappa


def _layer(seed=0):
    torch.manual_seed(seed)
    student = quantize_model(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)), 4, 4)
    for p in student.parameters():
        p.grad = 1e-4 * torch.randn_like(p)  # a late-training gradient: tiny steps
    return student


def _crossing(student, opt):
    before = {n: weight_codes(m.weight, m.w_bits) for n, m in [("0", student[0]), ("2", student[2])]}
    opt.step()
    return {r["layer"]: r for r in opt.last_records}, before


def test_plain_sgd_crosses_almost_nothing_and_gi_reaches_the_target():
    rho = 0.02
    plain = _layer()
    opt = InundatedSGD(param_groups(plain), lr=0.1, momentum=0.9, rho=None)
    before = weight_codes(plain[0].weight, 4)
    opt.step()
    recs = {r["layer"]: r for r in opt.last_records}
    counted = (weight_codes(plain[0].weight, 4) != before).float().mean().item()
    assert recs["0"]["kappa"] == 1.0 and recs["0"]["crossing_fraction"] == pytest.approx(counted)
    assert counted < rho / 10

    gi = _layer()
    opt = InundatedSGD(param_groups(gi), lr=0.1, momentum=0.9, rho=rho, kappa_max=1e6)
    before = weight_codes(gi[0].weight, 4)
    opt.step()
    recs = {r["layer"]: r for r in opt.last_records}
    counted = (weight_codes(gi[0].weight, 4) != before).float().mean().item()
    assert recs["0"]["crossing_fraction"] == pytest.approx(counted)  # the record is the real step
    assert abs(counted - rho) <= 0.25 * rho
    assert all(r["kappa"] >= 1.0 for r in opt.last_records)
    assert recs["0"]["kappa"] > 1.0
    assert set(recs) == {"0", "2"}  # every quantized weight; biases take the plain step


def test_gi_keeps_kappa_one_when_the_step_already_crosses_enough():
    student = _layer()
    for p in student.parameters():
        p.grad = 10 * torch.randn_like(p)
    opt = InundatedSGD(param_groups(student), lr=0.1, rho=0.01)
    opt.step()
    assert all(r["kappa"] == 1.0 and r["crossing_fraction"] >= 0.01 for r in opt.last_records)


def test_gi_respects_the_warm_up_cap():
    student = _layer()
    for p in student.parameters():
        p.grad = 1e-9 * torch.randn_like(p)
    opt = InundatedSGD(param_groups(student), lr=0.1, rho=0.5, kappa_max=128)
    opt.step()
    assert all(r["kappa"] == 128 for r in opt.last_records)


def test_search_kappa_rules():
    calls = []

    def crossing(k):  # monotone: fraction = k / 1000
        calls.append(k)
        return k / 1000

    kappa, frac, n = search_kappa(crossing, rho=0.0123, kappa_max=128, bisect_steps=5)
    assert calls[:5] == [1, 2, 4, 8, 16]  # doubling until the target is passed
    assert 8 <= kappa <= 16 and n == len(calls) <= 5 + 5
    assert abs(frac - 0.0123) <= abs(16 / 1000 - 0.0123)
    # already enough at κ=1: no search
    assert search_kappa(lambda k: 0.5, 0.01) == (1.0, 0.5, 1)
    # early stop within ρ/100
    calls.clear()
    assert search_kappa(crossing, rho=0.004)[0] == 4 and calls == [1, 2, 4]
    # never below one, whatever the crossing curve does
    for rho in (1e-4, 0.3, 0.9):
        assert search_kappa(lambda k: 0.0 if k < 1.5 else 1.0, rho)[0] >= 1.0


def test_gi_matches_torch_sgd_when_rho_is_off():
    a, b = _layer(1), _layer(1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        pb.grad = pa.grad.clone()
    ours = InundatedSGD(param_groups(a), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for _ in range(3):
        ours.step()
        ref.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-7)


def test_bad_arguments():
    student = _layer()
    with pytest.raises(ValueError, match="rho=2"):
        InundatedSGD(param_groups(student), lr=0.1, rho=2)
    with pytest.raises(ValueError, match="kappa_max=0.5"):
        InundatedSGD(param_groups(student), lr=0.1, kappa_max=0.5)
