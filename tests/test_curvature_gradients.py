"""Gradients, gradient cosines, loss slices and random directions against direct evaluation."""

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from conftest import exact_hessian, make_batches
from landscape.curvature import (
    CurvatureError,
    Hessian,
    gradient,
    gradient_cosine,
    loss_slice,
    loss_surface,
    random_direction,
)
from landscape.losses import cross_entropy, kl_to_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def direct_loss(model, loss_fn, batches, theta):
    """Mean loss at flat parameters theta, evaluated without touching the model."""
    params = dict(model.named_parameters())
    d, o = {}, 0
    for n, p in params.items():
        d[n] = theta[o : o + p.numel()].view_as(p)
        o += p.numel()
    total = sum(b[0].shape[0] for b in batches)
    with torch.no_grad():
        return float(sum(b[0].shape[0] * loss_fn(lambda x: functional_call(model, d, (x,)), b) for b in batches) / total)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_gradient_matches_autograd_of_weighted_mean(model, teacher):
    loss = kl_to_teacher(teacher, temperature=2.0)
    batches = make_batches([5, 2])
    _, f, theta0 = exact_hessian(model, loss, batches)
    expected = torch.func.grad(f)(theta0)
    g, value = gradient(model, loss, batches, return_loss=True)
    assert torch.allclose(g, expected, rtol=1e-12, atol=1e-14)
    assert math.isclose(value, float(f(theta0)), rel_tol=1e-12)
    assert all(p.grad is None for p in model.parameters())
    sub = gradient(model, loss, batches, params=["fc"])
    assert torch.allclose(sub, expected[-52:], rtol=1e-12, atol=1e-14)


def test_gradient_cosine_rows(model, teacher):
    batches = make_batches([6])
    ce, kl = cross_entropy(), kl_to_teacher(teacher, temperature=4.0)
    rows = gradient_cosine(model, ce, kl, batches)
    # the analyzers' table layout: grad_norm per loss, cosine with loss "ce|kl"
    assert all(set(r) == {"loss", "layer", "metric", "value"} for r in rows)
    layers = [r["layer"] for r in rows if r["metric"] == "cosine"]
    assert layers == ["all", "conv", "bn", "fc"]
    assert {r["loss"] for r in rows if r["metric"] == "cosine"} == {"ce|kl"}
    ga, gb = gradient(model, ce, batches), gradient(model, kl, batches)
    cos = {r["layer"]: r["value"] for r in rows if r["metric"] == "cosine"}
    assert math.isclose(cos["all"], float(ga @ gb / (ga.norm() * gb.norm())), rel_tol=1e-12)
    a, b = ga[-52:], gb[-52:]
    assert math.isclose(cos["fc"], float(a @ b / (a.norm() * b.norm())), rel_tol=1e-12)
    norms = {r["loss"]: r["value"] for r in rows if r["metric"] == "grad_norm"}
    assert set(norms) == {"ce", "kl"} and all(r["layer"] == "all" for r in rows if r["metric"] == "grad_norm")
    assert math.isclose(norms["ce"], float(ga.norm()), rel_tol=1e-12)
    assert math.isclose(norms["kl"], float(gb.norm()), rel_tol=1e-12)
    assert -1 <= cos["conv"] <= 1
    named = gradient_cosine(model, ce, ce, batches, per_layer=False, names=("x", "y"))
    assert [(r["loss"], r["metric"]) for r in named] == [("x", "grad_norm"), ("y", "grad_norm"), ("x|y", "cosine")]
    assert math.isclose(named[-1]["value"], 1.0, rel_tol=1e-12)


def test_loss_slice_equals_direct_evaluation_and_restores_exactly(model, teacher):
    loss = kl_to_teacher(teacher, temperature=2.0)
    batches = make_batches([4, 3])
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    pairs = Hessian(model, loss, batches).eigenpairs(k=1, method="lanczos", tol=1e-8)
    e = pairs.vectors[:, 0]
    ks = [-0.5, -0.1, 0.0, 0.3]
    values = loss_slice(model, loss, batches, e, ks)
    theta0 = flat(model)
    model.eval()
    direct = [direct_loss(model, loss, batches, theta0 + k * e) for k in ks]
    model.train()
    np.testing.assert_allclose(values, direct, rtol=1e-12)
    assert all(m.training for m in model.modules())
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    # near the top eigenvector the slice is locally quadratic with curvature lambda_max
    h = 1e-3
    s = loss_slice(model, loss, batches, e, [-h, 0.0, h])
    assert math.isclose((s[0] - 2 * s[1] + s[2]) / h**2, float(pairs.values[0]), rel_tol=1e-4)


def test_loss_surface(model):
    batches = make_batches([6])
    d1 = random_direction(model, seed=1)
    d2 = random_direction(model, seed=2)
    before = [p.detach().clone() for p in model.parameters()]
    surf = loss_surface(model, cross_entropy(), batches, d1, d2, [-1.0, 0.0, 1.0], [0.0, 0.5])
    assert surf.shape == (3, 2)
    theta0 = flat(model)
    for i, a in enumerate([-1.0, 0.0, 1.0]):
        for j, b in enumerate([0.0, 0.5]):
            assert math.isclose(surf[i, j], direct_loss(model, cross_entropy(), batches, theta0 + a * d1 + b * d2), rel_tol=1e-12)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


def test_parameters_restored_when_loss_fails(model):
    batches = make_batches([3])
    before = [p.detach().clone() for p in model.parameters()]
    d = random_direction(model)

    def explodes(m, b):
        out = torch.nn.functional.cross_entropy(m(b[0]), b[1])
        return out if float(m.fc.bias.sum()) == float(before[-1].sum()) else out * float("nan")

    with pytest.raises(CurvatureError, match="not finite"):
        loss_slice(model, explodes, batches, d + 1.0, [0.0, 1.0])
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


def test_random_direction_filter_normalised(model):
    d = random_direction(model, seed=3)
    assert torch.equal(d, random_direction(model, seed=3))
    assert not torch.equal(d, random_direction(model, seed=4))
    o = 0
    for name, p in model.named_parameters():
        part = d[o : o + p.numel()].view_as(p)
        o += p.numel()
        if p.dim() <= 1:
            assert torch.all(part == 0), name
        else:
            dn = part.reshape(p.shape[0], -1).norm(dim=1)
            wn = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            assert torch.allclose(dn, wn, rtol=1e-12), name
    raw = random_direction(model, seed=3, filter_normalize=False)
    assert raw.shape == d.shape and torch.all(raw != 0)
    assert random_direction(model, params=["fc.weight"]).shape == (48,)


def test_direction_errors(model):
    batches = make_batches([3])
    n = sum(p.numel() for p in model.parameters())
    with pytest.raises(CurvatureError, match=f"length {n}"):
        loss_slice(model, cross_entropy(), batches, torch.zeros(n - 1, dtype=torch.float64), [0.0])
    with pytest.raises(CurvatureError, match="dtype"):
        loss_slice(model, cross_entropy(), batches, torch.zeros(n), [0.0])
    with pytest.raises(CurvatureError, match="no batches"):
        gradient(model, cross_entropy(), [])


def test_slice_context_entered_once_at_theta_and_exited_after_restore(model):
    batches = make_batches([4])
    d = random_direction(model, seed=5)
    theta0 = flat(model).clone()
    log = []

    class Freeze:
        def __enter__(self):
            log.append(("enter", torch.equal(flat(model), theta0)))
            # e.g. frozen rounding: the loss during the slice is evaluated in a changed mode
            model.fc.bias.requires_grad_(True)
            return self

        def __exit__(self, *exc):
            log.append(("exit", torch.equal(flat(model), theta0)))
            return False

    values = loss_slice(model, cross_entropy(), batches, d, [-0.5, 0.0, 0.5], context=lambda: Freeze())
    assert log == [("enter", True), ("exit", True)]  # once, at θ; after the restore
    assert isinstance(values, torch.Tensor) and values.dtype == torch.float64
    surf = loss_surface(model, cross_entropy(), batches, d, d, [0.0, 1.0], [0.0], context=Freeze)
    assert log[-2:] == [("enter", True), ("exit", True)] and surf.shape == (2, 1)
    with pytest.raises(CurvatureError, match="context must be a zero-argument callable"):
        loss_slice(model, cross_entropy(), batches, d, [0.0], context=Freeze())

    def boom(m, b):
        raise RuntimeError("boom")

    with pytest.raises(CurvatureError, match="boom"):
        loss_slice(model, boom, batches, d, [1.0], context=Freeze)
    assert log[-1] == ("exit", True)  # restored before the context exits, also on error
