"""GGN, true Fisher and empirical Fisher against dense references built independently with
torch.func (output Jacobian by jacrev, output Hessian by torch.func.hessian), float64."""

import pytest
import torch
from torch.func import functional_call, grad, hessian, jacrev, vmap

from conftest import make_batches, make_model
from landscape.curvature import GGN, CurvatureError, EmpiricalFisher, Fisher, Hessian, curvature_operator
from landscape.losses import cross_entropy, distillation, kl_to_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _theta(model):
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    theta0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def unflat(theta):
        d, o = {}, 0
        for n in names:
            d[n] = theta[o : o + params[n].numel()].view_as(params[n])
            o += params[n].numel()
        return d

    return theta0, unflat


def dense_ggn(model, loss, batches):
    """Σ_b n_b J_bᵀ (∂²L_b/∂f²) J_b / Σ_b n_b with J by jacrev and the output Hessian by torch.func."""
    model.eval()
    theta0, unflat = _theta(model)
    total = sum(b[0].shape[0] for b in batches)
    G = 0
    for batch in batches:
        x = batch[0]
        f0 = functional_call(model, unflat(theta0), (x,))
        shape = f0.shape
        J = jacrev(lambda th: functional_call(model, unflat(th), (x,)).reshape(-1))(theta0)
        H_out = hessian(lambda f: loss.on_outputs(f.reshape(shape), batch))(f0.detach().reshape(-1))
        G = G + batch[0].shape[0] * J.T @ H_out @ J
    return G / total


def dense_empirical_fisher(model, loss, batches):
    """(1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ with per-sample gradients by vmap(grad), ℓ_i = B·(sample i's share of L_b)."""
    model.eval()
    theta0, unflat = _theta(model)
    rows = []
    for batch in batches:
        x, y = batch

        def sample_loss(th, xi, yi):  # ℓ_i: the loss of a batch holding sample i alone
            f = functional_call(model, unflat(th), (xi[None],))
            return loss.on_outputs(f, (xi[None], yi[None]))

        rows.append(vmap(grad(sample_loss), in_dims=(None, 0, 0))(theta0, x, y))
    Gs = torch.cat(rows)
    return Gs.T @ Gs / Gs.shape[0]


@pytest.fixture(params=["ce", "kl-batchmean", "kl-mean", "ce+kl"])
def loss(request, teacher):
    return {
        "ce": cross_entropy(),
        "kl-batchmean": kl_to_teacher(teacher, temperature=3.0),
        "kl-mean": kl_to_teacher(teacher, temperature=4.0, reduction="mean"),
        "ce+kl": distillation(teacher, temperature=2.0, ce_scale=0.7, kd_scale=1.5, reduction="mean"),
    }[request.param]


def test_ggn_matches_dense_reference(model, loss):
    batches = make_batches([5, 3])
    Gx = dense_ggn(model, loss, batches)
    G = GGN(model, loss, batches)
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(G.shape[0], 4, generator=gen, dtype=torch.float64)
    assert rel(G @ V, Gx @ V) < 1e-10
    assert rel(G @ V[:, 0], Gx @ V[:, 0]) < 1e-10
    assert float(torch.linalg.eigvalsh(G.dense()).min()) > -1e-12 * float(torch.linalg.eigvalsh(Gx).max())


@pytest.mark.parametrize("cache", [True, False, "partial"])
def test_ggn_cache_modes_agree(model, teacher, cache):
    loss = kl_to_teacher(teacher, temperature=2.0)
    batches = make_batches([4, 2, 3])
    Gx = dense_ggn(model, loss, batches)
    if cache == "partial":
        probe = GGN(model, loss, batches)
        probe @ torch.zeros(probe.shape[0], dtype=torch.float64)
        G = GGN(model, loss, batches, memory_budget=int(probe.cached_bytes * 0.5))
    else:
        G = GGN(model, loss, batches, cache_graph=cache)
    v = torch.randn(G.shape[0], dtype=torch.float64)
    assert rel(G @ v, Gx @ v) < 1e-10
    if cache == "partial":
        assert G.n_cached == 1 and not G.cache_complete


def test_ggn_equals_hessian_for_a_linear_model():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(72, 4)).double()
    batches = make_batches([6, 3])
    G, H = GGN(lin, cross_entropy(), batches), Hessian(lin, cross_entropy(), batches)
    assert rel(G.dense(), H.dense()) < 1e-12


def test_true_fisher_equals_ggn_for_softmax_losses(model, loss):
    batches = make_batches([5, 3])
    G = GGN(model, loss, batches).dense()
    F = Fisher(model, loss, batches).dense()  # exact expectation over classes: another code path
    assert rel(F, G) < 1e-12
    mc = Fisher(model, loss, batches, mc_samples=2000, seed=3)
    Fm = mc.dense()
    assert rel(Fm, G) < 0.1  # Monte Carlo: close, not equal
    assert rel(mc.dense(), Fm) < 1e-14  # one fixed matrix (labels drawn once per batch)


def test_empirical_fisher_matches_per_sample_gradients(model, teacher):
    batches = make_batches([5, 3])
    for loss in (cross_entropy(), kl_to_teacher(teacher, temperature=2.0)):
        E = EmpiricalFisher(model, loss, batches)
        Ex = dense_empirical_fisher(model, loss, batches)
        v = torch.randn(E.shape[0], dtype=torch.float64)
        assert rel(E @ v, Ex @ v) < 1e-10


def test_interface_and_errors(model):
    batches = make_batches([6])
    G = curvature_operator("ggn", model, cross_entropy(), batches)
    assert isinstance(G, GGN) and G.shape[0] == sum(p.numel() for p in model.parameters())
    est = G.trace(max_matvecs=10)
    dens = G.density(n_steps=5)
    pairs = G.eigenpairs(k=1, method="lanczos", tol=1e-8)
    assert est.n_matvecs == 10 and dens.n_runs == 1 and pairs.converged
    assert float(pairs.values[0]) > 0
    op = G.as_linear_operator()
    assert op.shape == G.shape
    with pytest.raises(CurvatureError, match="GGN needs a loss that splits at the model's outputs"):
        GGN(model, lambda m, b: m(b[0]).sum(), batches)
    with pytest.raises(CurvatureError, match="unknown curvature 'hesian'"):
        curvature_operator("hesian", model, cross_entropy(), batches)
    with pytest.raises(CurvatureError, match="mc_samples"):
        Fisher(model, cross_entropy(), batches, mc_samples=0)
    # the model is left alone: mode, .grad, parameters
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    GGN(model, cross_entropy(), batches) @ torch.ones(G.shape[0], dtype=torch.float64)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
