"""Shared fixtures for the curvature tests: a tiny float64 CNN (conv, BatchNorm in eval mode,
linear), a teacher, data, and the exact Hessian by ``torch.func.hessian``.

The suite runs in the kernel mode of the command line (pinned AVX2 kernels, set here before
torch loads), so that what a test computes in-process and what a ``landscape`` subprocess
computes agree bit for bit."""

import os

from landscape.kernels import REPRODUCIBLE, pinned_env

os.environ.update(pinned_env(os.environ, REPRODUCIBLE))

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.Tanh()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.bn(self.conv(x)))).flatten(1))


def make_model(seed: int) -> TinyCNN:
    torch.manual_seed(seed)
    m = TinyCNN().double()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def make_batches(sizes, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 2, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g))
        for n in sizes
    ]


_CACHE = {}


def exact_hessian(model, loss_fn, batches, names=None):
    """Exact Hessian of the size-weighted mean loss w.r.t. the named parameters (flat).

    Memoised on the parameter values, the loss and the data (torch.func.hessian is the slow part)."""
    model.eval()
    key = (
        tuple(float(p.detach().double().sum()) for p in model.parameters()),
        tuple(float(b.double().sum()) for b in model.buffers()),
        repr(loss_fn),
        tuple(float(p.detach().sum()) for p in getattr(loss_fn, "teacher", nn.Module()).parameters()),
        tuple((float(b[0].sum()), tuple(b[0].shape)) for b in batches),
        None if names is None else tuple(names),
    )
    if key not in _CACHE:
        _CACHE[key] = _exact_hessian(model, loss_fn, batches, names)
    return _CACHE[key]


def _exact_hessian(model, loss_fn, batches, names=None):
    params = dict(model.named_parameters())
    names = list(params) if names is None else list(names)
    theta0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    total = sum(b[0].shape[0] for b in batches)

    def f(theta):
        d, o = {}, 0
        for n in names:
            d[n] = theta[o : o + params[n].numel()].view_as(params[n])
            o += params[n].numel()

        def proxy(x):
            return functional_call(model, d, (x,))

        return sum(b[0].shape[0] * loss_fn(proxy, b) for b in batches) / total

    return torch.func.hessian(f)(theta0), f, theta0


@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest and robust on a shared machine (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def model():
    return make_model(0)


@pytest.fixture
def teacher():
    return make_model(123)


@pytest.fixture(scope="session")
def tiny_kd(tmp_path_factory):
    """digits_tiny's ``kd`` run (3 epochs) and its teacher under one root, trained once per session
    (the trust tests share it; copy it before changing anything)."""
    from landscape.config import load_recipe
    from tiny_runs import TINY, train_tiny

    out = tmp_path_factory.mktemp("tiny_kd")
    train_tiny(load_recipe(TINY), out, ["kd"])
    return out
