"""The PyHessian drop-in: the same calls through PyHessian 0.1 (cuda=False) and ours, compared,
with the exact Hessian of a small float32 model as the referee."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from landscape.compat.pyhessian import TraceSamples, hessian

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    return model, x, y


def _exact(model, x, y):
    m = copy.deepcopy(model).double()
    from landscape.curvature import Hessian

    return Hessian(m, lambda mm, b: nn.functional.cross_entropy(mm(b[0]), b[1]), [(x.double(), y)]).dense()


@pytest.fixture(scope="module")
def pyhessian_mod():
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    return pytest.importorskip("pyhessian")


@pytest.mark.parametrize("source", ["data", "dataloader"])
def test_same_calls_same_numbers(pyhessian_mod, source):
    model, x, y = _problem()
    model.train()
    crit = nn.CrossEntropyLoss()
    if source == "data":
        kw = {"data": (x, y)}
    else:
        kw = {"dataloader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=12)}
    exact = torch.linalg.eigvalsh(_exact(model, x, y)).flip(0)
    exact_trace = float(exact.sum())

    theirs = pyhessian_mod.hessian(copy.deepcopy(model), crit, cuda=False, **kw)
    ours = hessian(model, crit, cuda=False, **kw)

    torch.manual_seed(0)
    ev_t, vec_t = theirs.eigenvalues(maxIter=200, tol=1e-6, top_n=2)
    torch.manual_seed(0)
    ev_o, vec_o = ours.eigenvalues(maxIter=200, tol=1e-6, top_n=2)
    assert isinstance(ev_o, list) and len(ev_o) == 2 and isinstance(vec_o[0], list)
    assert [v.shape for v in vec_o[0]] == [p.shape for p in model.parameters()]
    np.testing.assert_allclose(ev_o, exact[:2].numpy(), rtol=1e-4)
    np.testing.assert_allclose(ev_o, ev_t, rtol=1e-3)  # PyHessian is right here (tight tol): same numbers

    torch.manual_seed(0)
    tr_t = theirs.trace(maxIter=200, tol=1e-3)
    torch.manual_seed(0)
    tr_o = ours.trace(maxIter=200, tol=0.02)
    assert isinstance(tr_o, TraceSamples) and isinstance(tr_o, list) and len(tr_o) == tr_o.n_matvecs
    assert math.isclose(float(np.mean(tr_o)), tr_o.value, rel_tol=1e-12)
    assert math.isclose(tr_o.stderr, float(np.std(tr_o, ddof=1) / math.sqrt(len(tr_o))), rel_tol=1e-9)
    assert abs(tr_o.value - exact_trace) < 4 * tr_o.stderr
    # PyHessian returns the same structure, but its rule (change of the running mean divided by the
    # mean, which can be negative) stops here after 2 probes, without an error bar
    assert isinstance(tr_t, list) and len(tr_t) < 10

    # PyHessian 0.1's density calls torch.eig, removed in torch 2
    with pytest.raises((AttributeError, RuntimeError), match="eig"):
        theirs.density(iter=5, n_v=1)
    eig, wts = ours.density(iter=20, n_v=2)
    assert len(eig) == 2 and len(wts) == 2 and all(len(e) == 20 for e in eig)
    assert all(abs(sum(w) - 1) < 1e-5 for w in wts)
    assert min(min(e) for e in eig) >= float(exact[-1]) - 1e-4 and max(max(e) for e in eig) <= float(exact[0]) + 1e-4


def test_model_mode_and_grad_left_alone(pyhessian_mod):
    model, x, y = _problem()
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    h = hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    h.eigenvalues(maxIter=5)
    h.trace(maxIter=5)
    h.density(iter=5)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    other = copy.deepcopy(model)
    pyhessian_mod.hessian(other, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    assert not other.training and other[0].weight.grad is not None  # what the drop-in avoids


def test_bad_arguments():
    model, x, y = _problem()
    with pytest.raises(ValueError, match="exactly one of data"):
        hessian(model, nn.CrossEntropyLoss(), cuda=False)
    with pytest.raises(ValueError, match="exactly one of data"):
        hessian(model, nn.CrossEntropyLoss(), data=(x, y), dataloader=[(x, y)], cuda=False)
