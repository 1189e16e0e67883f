"""Per-layer curvature from one operator: views on a parameter subset share the cached graph and
equal the exact diagonal blocks (torch.func.hessian, float64)."""

import math

import pytest
import torch

from conftest import exact_hessian, make_batches
from landscape.curvature import GGN, CurvatureError, Hessian, trace
from landscape.losses import cross_entropy, kl_to_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _block(model, Hx, names):
    all_names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    offs = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    idx = torch.cat([torch.arange(offs[all_names.index(n)], offs[all_names.index(n) + 1]) for n in names])
    return Hx[idx][:, idx]


@pytest.mark.parametrize("cache", ["auto", "partial", False])
def test_layer_views_are_the_exact_diagonal_blocks(model, teacher, cache):
    loss = kl_to_teacher(teacher, temperature=3.0)
    batches = make_batches([5, 3])
    Hx, _, _ = exact_hessian(model, loss, batches)
    kw = {"cache_graph": False} if cache is False else {}
    if cache == "partial":
        probe = Hessian(model, loss, batches)
        probe @ torch.zeros(probe.shape[0], dtype=torch.float64)
        kw = {"memory_budget": int(probe.cached_bytes * 0.7)}
    H = Hessian(model, loss, batches, **kw)
    layers = H.layers()
    assert list(layers) == ["conv", "bn", "fc"]
    g = torch.Generator().manual_seed(0)
    for name, view in layers.items():
        block = _block(model, Hx, view.names)
        assert view.shape == block.shape and view.names == [n for n in H.names if n.startswith(name + ".")]
        V = torch.randn(view.shape[0], 3, generator=g, dtype=torch.float64)
        assert rel(view @ V, block @ V) < 1e-10
        assert math.isclose(float(torch.trace(view.dense())), float(torch.trace(block)), rel_tol=1e-10)
    assert H.n_rebuilds == 1 and H.n_matvecs == 0  # one graph for all; views count their own products
    assert sum(v.n_matvecs for v in layers.values()) > 0


def test_views_share_the_cache_and_restrict_again(model):
    batches = make_batches([6])
    H = Hessian(model, cross_entropy(), batches)
    Hx, _, _ = exact_hessian(model, cross_entropy(), batches)
    H @ torch.zeros(H.shape[0], dtype=torch.float64)
    nbytes = H.cached_bytes
    sub = H.restrict(["fc", "conv.weight"])
    assert sub.names == ["conv.weight", "fc.weight", "fc.bias"]  # the operator's own order
    assert sub.cached_bytes == nbytes and sub.n_rebuilds == 1
    w = sub.restrict("fc.bias")
    assert w.names == ["fc.bias"]
    v = torch.randn(4, dtype=torch.float64)
    assert rel(w @ v, _block(model, Hx, ["fc.bias"]) @ v) < 1e-10
    assert H.n_rebuilds == 1
    with pytest.raises(CurvatureError, match="not among this operator's parameters"):
        w.restrict("conv")
    assert "view" in repr(w) and "n=4" in repr(w)


def test_block_trace_estimate_and_ggn_views(model):
    batches = make_batches([6])
    G = GGN(model, cross_entropy(), batches)
    Gd = G.dense()
    for name, view in G.layers().items():
        idx = [i for i, n in enumerate(G.names) if n.startswith(name + ".")]
        o = [sum(p.numel() for p in G.params[:i]) for i in range(len(G.params) + 1)]
        rows = torch.cat([torch.arange(o[i], o[i + 1]) for i in idx])
        block = Gd[rows][:, rows]
        assert rel(view.dense(), block) < 1e-10
        est = trace(view, max_matvecs=40, seed=1)
        assert abs(est.value - float(torch.trace(block))) < 5 * est.stderr + 1e-12
