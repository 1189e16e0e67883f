"""Gradient inundation: the official κ search and step of METHOD.md §3, checked by hand."""

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


def _codes(m, w=None):
    return weight_codes(m.weight if w is None else w, m.w_bits, m.zero_point)


def test_plain_sgd_crosses_almost_nothing_and_gi_reaches_the_target():
    rho = 0.02
    plain = _layer()
    opt = InundatedSGD(param_groups(plain), lr=0.1, momentum=0.9, rho=None)
    before = _codes(plain[0])
    opt.step()
    recs = {r["layer"]: r for r in opt.last_records}
    counted = (_codes(plain[0]) != before).float().mean().item()
    assert recs["0"]["kappa"] == 1.0 and recs["0"]["crossing_fraction"] == pytest.approx(counted)
    assert counted < rho / 10

    gi = _layer()
    opt = InundatedSGD(param_groups(gi), lr=0.1, momentum=0.9, rho=rho, kappa_max=1e6)
    before = _codes(gi[0])
    opt.step()
    recs = {r["layer"]: r for r in opt.last_records}
    counted = (_codes(gi[0]) != before).float().mean().item()
    assert recs["0"]["crossing_fraction"] == counted  # the record is the step really taken
    assert recs["0"]["kappa"] > 1.0 and abs(counted - rho) <= 0.25 * rho  # κ·d crosses ≈ ρ
    assert all(r["kappa"] >= 1.0 and not r["capped"] for r in opt.last_records)
    assert set(recs) == {"0", "2"}  # every quantized weight; biases take the plain step


def _official_kappa(p, d, lr, codes, bits, zp, rho, cap, steps=5):
    """METHOD §3 / the official SGD_adalr search, transcribed literally."""
    def perc(alpha):
        return (weight_codes(p.add(d, alpha=-lr * alpha), bits, zp) != codes).double().mean().item()

    alpha = 1.0
    if perc(alpha) >= rho:
        return alpha
    while True:
        alpha = min(alpha * 2, cap)
        if perc(alpha) >= rho or alpha >= cap:
            break
    start, end = alpha / 2, alpha
    for _ in range(steps):
        mid = (start + end) / 2
        f = perc(mid)
        if abs(f - rho) < rho / 100:
            break
        start, end = (mid, end) if f < rho else (start, mid)
    return mid


def test_official_step_by_hand_for_three_steps():
    """θ, the momentum buffer and κ of three official GI steps against a hand computation:
    the buffer keeps raw gradients (weight decay included), κ scales only the step taken."""
    torch.manual_seed(3)
    student = quantize_model(nn.Sequential(nn.Linear(12, 6)), 3, 4).double()
    layer = student[0]
    assert layer.zero_point == "integral"  # the official grid
    lr, mu, wd, rho = 0.05, 0.9, 1e-3, 0.05
    opt = InundatedSGD(param_groups(student), lr=lr, momentum=mu, nesterov=True, weight_decay=wd,
                       rho=rho, kappa_max=1e6)
    grads = [1e-3 * torch.randn(6, 12, dtype=torch.float64) for _ in range(3)]
    theta, buf, kappas = layer.weight.detach().clone(), None, []
    for g_raw in grads:
        layer.weight.grad, layer.bias.grad = g_raw.clone(), torch.zeros_like(layer.bias)
        g = g_raw + wd * theta
        buf = g.clone() if buf is None else mu * buf + g
        d = g + mu * buf
        zp = layer.zero_point
        kappa = _official_kappa(theta, d, lr, weight_codes(theta, 3, zp), 3, zp, rho, 1e6)
        theta = theta - lr * kappa * d
        kappas.append(kappa)
        opt.step()
        rec = opt.last_records[0]
        assert rec["kappa"] == kappa
        torch.testing.assert_close(layer.weight.detach(), theta, rtol=0, atol=1e-15)
        torch.testing.assert_close(opt.state[layer.weight]["momentum_buffer"], buf, rtol=0, atol=1e-15)
    assert min(kappas) > 1.0  # GI scaled every step; the buffer never saw κ


def test_buffer_form_feeds_kappa_into_the_momentum_buffer():
    """The ablation (gi_form = "buffer"): b = μ b + κ g, so κ acts on later steps too."""
    a, b = _layer(1), _layer(1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        pb.grad = pa.grad.clone()
    official = InundatedSGD(param_groups(a), lr=0.1, rho=0.02, kappa_max=1e6)
    buffer = InundatedSGD(param_groups(b), lr=0.1, rho=0.02, kappa_max=1e6, form="buffer")
    official.step()
    buffer.step()
    k_a, k_b = official.last_records[0]["kappa"], buffer.last_records[0]["kappa"]
    assert k_a > 1 and k_b > 1
    g = a[0].weight.grad
    torch.testing.assert_close(official.state[a[0].weight]["momentum_buffer"], g)
    torch.testing.assert_close(buffer.state[b[0].weight]["momentum_buffer"], k_b * g)
    # first step, b = g: official d = (1 + μ) g scaled by κ; buffer d = κ g + μ κ g, the same
    assert k_a == pytest.approx(k_b)
    with pytest.raises(ValueError, match="form='sgd'"):
        InundatedSGD(param_groups(a), lr=0.1, form="sgd")


def test_gi_keeps_kappa_one_when_the_step_already_crosses_enough():
    student = _layer()
    for p in student.parameters():
        p.grad = 10 * torch.randn_like(p)
    opt = InundatedSGD(param_groups(student), lr=0.1, rho=0.01)
    opt.step()
    assert all(r["kappa"] == 1.0 and r["crossing_fraction"] >= 0.01 for r in opt.last_records)


def test_gi_warm_up_cap_bisects_below_it_as_the_official_code():
    # was: kappa == 128. The official search stops doubling at 128 ("alpha > 100"), then
    # still bisects [64, 128] five times and keeps the last midpoint: 126.
    student = _layer()
    for p in student.parameters():
        p.grad = 1e-9 * torch.randn_like(p)
    opt = InundatedSGD(param_groups(student), lr=0.1, rho=0.5, kappa_max=128)
    opt.step()
    assert all(r["kappa"] == 126 and r["capped"] for r in opt.last_records)


def test_search_kappa_rules():
    calls = []

    def crossing(k):  # monotone: fraction = k / 1000
        calls.append(k)
        return k / 1000

    kappa, frac, n, capped = search_kappa(crossing, rho=0.0123, kappa_max=128, bisect_steps=5)
    assert calls[:5] == [1, 2, 4, 8, 16]  # doubling until the target is passed
    assert calls[5:] == [12, 14, 13, 12.5, 12.25]  # bisection, stopped within ρ/100
    assert (kappa, n, capped) == (12.25, 10, False) and frac == pytest.approx(0.01225)
    # already enough at κ=1: no search
    assert tuple(search_kappa(lambda k: 0.5, 0.01)) == (1.0, 0.5, 1, False)
    # was: κ = 4 after [1, 2, 4] (an early stop while doubling). The official search always
    # bisects [κ/2, κ] and keeps the last midpoint, which may fall short of ρ.
    calls.clear()
    found = search_kappa(crossing, rho=0.004)
    assert calls == [1, 2, 4, 3, 3.5, 3.75, 3.875, 3.9375] and found.kappa == 3.9375
    # never below one, whatever the crossing curve does
    for rho in (1e-4, 0.3, 0.9):
        assert search_kappa(lambda k: 0.0 if k < 1.5 else 1.0, rho).kappa >= 1.0
    # a cap that is not a power of two is never exceeded
    found = search_kappa(lambda k: 0.0, rho=0.1, kappa_max=100)
    assert found.capped and 50 <= found.kappa <= 100


def test_gi_is_torch_sgd_bit_for_bit_when_rho_is_off():
    # was allclose(atol=1e-7): the plain step now uses torch.optim.SGD's very operations
    a, b = _layer(1), _layer(1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        pb.grad = pa.grad.clone()
    ours = InundatedSGD(param_groups(a), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for _ in range(3):
        ours.step()
        ref.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_bad_arguments():
    student = _layer()
    with pytest.raises(ValueError, match="rho=2"):
        InundatedSGD(param_groups(student), lr=0.1, rho=2)
    with pytest.raises(ValueError, match="kappa_max=0.5"):
        InundatedSGD(param_groups(student), lr=0.1, kappa_max=0.5)
