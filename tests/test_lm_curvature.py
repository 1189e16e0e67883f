"""Transformers in the curvature engine: products through attention (nn.MultiheadAttention and
F.scaled_dot_product_attention) on dict batches against torch.func in float64, float and weight-only
quantized; a kernel without a double backward as one CurvatureError; per-group views (q, k, v
slices of a packed projection included) against the exact Hessian's diagonal blocks; dict batches
in estimators, slices, loaders and analyze_model."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape.analyzers import AnalysisError, analyze_model
from landscape.curvature import GGN, estimators, CurvatureError, Hessian, gradient, loss_slice, mean_loss
from landscape.losses import causal_lm
from lm_helpers import (exact_hessian, flat_params, functional_call, lm_batches, make_lm, ref_ggn_products, ref_hvp, reference_mode,
                        unflatten)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, robust on a shared machine


def _quantized(model):
    from landscape.quant import quantize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left in float are h6's (issue 17 item 2)
        return quantize_model(model, 4, None)


def _vectors(n, m=2, seed=3):
    return torch.randn(n, m, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ["mha", "sdpa"])
@pytest.mark.parametrize("quantized", [False, True])
def test_products_through_attention_equal_torch_func(attn, quantized):
    model = make_lm(attn=attn, n_blocks=1 if quantized or attn == "sdpa" else 2)
    if quantized:
        model = _quantized(model)
        assert any("Quant" in type(m).__name__ for m in model.modules())
    loss, batches = causal_lm(), lm_batches(pad=True, labels=True)
    names = [n for n, _ in model.named_parameters()]
    V = _vectors(sum(p.numel() for p in model.parameters()), 1)
    with reference_mode():
        ref_h = ref_hvp(model, loss, batches, names, V)
        ref_g = ref_ggn_products(model, loss, batches, names, V)
    assert float(ref_h.abs().max()) > 1e-2
    torch.testing.assert_close(Hessian(model, loss, batches) @ V, ref_h, rtol=0, atol=1e-12 * float(ref_h.abs().max()))
    torch.testing.assert_close(GGN(model, loss, batches) @ V, ref_g, rtol=0, atol=1e-12 * float(ref_g.abs().max()))


def test_math_kernel_whatever_backend_the_user_enabled():
    """A user's sdpa_kernel(FLASH) around the call does not reach the engine's products."""
    model, loss, batches = make_lm(attn="sdpa"), causal_lm(), lm_batches(pad=False)
    V = _vectors(sum(p.numel() for p in model.parameters()), 1)
    expected = Hessian(model, loss, batches) @ V
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        got = Hessian(model, loss, batches) @ V
        g = gradient(model, loss, batches)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-15)
    assert torch.isfinite(g).all()


class FusedAttention(nn.Module):
    """Calls the fused CPU kernel directly, bypassing F.scaled_dot_product_attention's dispatch."""

    def __init__(self):
        super().__init__()
        self.inner = make_lm(attn="sdpa", n_blocks=1)
        self.proj = nn.Linear(4, 4).double()

    def forward(self, input_ids, attention_mask=None):
        x = self.proj(self.inner.tok(input_ids))[:, None]  # (B, 1, T, 4)
        y = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(x, x, x, is_causal=True)[0]
        return self.inner.head(y[:, 0])


def test_a_kernel_without_double_backward_is_one_curvature_error():
    model, batches = FusedAttention(), lm_batches(pad=False)
    H = Hessian(model, causal_lm(), batches)
    with pytest.raises(CurvatureError, match=r"_scaled_dot_product_flash_attention_for_cpu_backward cannot be "
                                             r"differentiated twice.*differentiable torch operations"):
        H @ torch.ones(H.shape[0], dtype=torch.float64)
    # the parameters after the fused op (between it and the loss) still have their curvature
    head = Hessian(model, causal_lm(), batches, params=["inner.head.weight", "inner.head.bias"])
    assert torch.isfinite(head @ torch.ones(head.shape[0], dtype=torch.float64)).all()


# ---------------------------------------------------------------------------- groups
@pytest.fixture(scope="module")
def block_hessian():
    """The exact Hessian over the blocks' parameters of a 1-block LM (torch.func.hessian, float64)."""
    model, loss, batches = make_lm(n_blocks=1, seed=5), causal_lm(), lm_batches(sizes=(3,), pad=True)
    names = [n for n, _ in model.named_parameters() if n.startswith("blocks.")]
    exact = exact_hessian(model, loss, names, batches[0])
    offsets, i = {}, 0
    for n in names:
        p = dict(model.named_parameters())[n]
        offsets[n] = torch.arange(i, i + p.numel()).reshape(p.shape)
        i += p.numel()
    return model, loss, batches, names, exact, offsets


def _coords(view, offsets):
    return torch.cat([(offsets[n] if c is None else offsets[n].narrow(*c)).reshape(-1)
                      for n, c in zip(view.names, view.cuts)])


def test_groups_are_the_exact_diagonal_blocks(block_hessian):
    model, loss, batches, names, exact, offsets = block_hessian
    H = Hessian(model, loss, batches, params=names)
    views = H.groups(r"blocks\.(\d+)\.(attn|mlp)", qkv=True)
    assert list(views) == ["0.attn", "0.attn.q", "0.attn.k", "0.attn.v", "0.mlp"]
    assert views["0.attn.q"].names == ["blocks.0.attn.in_proj_weight", "blocks.0.attn.in_proj_bias"]
    assert views["0.attn.k"].cuts == [(0, 4, 4), (0, 4, 4)] and views["0.attn.k"].shape == (20, 20)
    for key, view in views.items():
        idx = _coords(view, offsets)
        block = exact[idx][:, idx]
        dense = view.dense()
        torch.testing.assert_close(dense, block, rtol=0, atol=1e-12 * float(exact.abs().max()))
        torch.testing.assert_close(dense.trace(), block.trace(), rtol=1e-12, atol=1e-14)
    qkv = sum(float(views[f"0.attn.{t}"].dense().trace()) for t in "qkv")
    packed = torch.cat([offsets[n].reshape(-1) for n in views["0.attn.q"].names])
    assert qkv == pytest.approx(float(exact[packed, packed].sum()), rel=1e-12)
    assert H.n_rebuilds == 1  # every view used the one cached graph
    by_prefix = H.groups(["blocks.0.attn", "blocks.0.mlp.2"])
    assert by_prefix["blocks.0.mlp.2"].names == ["blocks.0.mlp.2.weight", "blocks.0.mlp.2.bias"]


def test_group_estimators_match_the_exact_block(block_hessian):
    model, loss, batches, names, exact, offsets = block_hessian
    H = Hessian(model, loss, batches, params=names)
    view = H.groups(r"blocks\.(\d+)\.(mlp)")["0.mlp"]
    block = exact[_coords(view, offsets)][:, _coords(view, offsets)]
    # the same Rademacher probes on the view and on the exact block give the same estimate
    est, ref = view.trace(max_matvecs=20, seed=7), estimators.trace(block, max_matvecs=20, seed=7)
    assert est.value == pytest.approx(ref.value, rel=1e-10)
    top = view.eigenpairs(k=1, method="lanczos", tol=1e-8, seed=1)
    assert float(top.values[0]) == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-6)
    dens = view.density(n_runs=1, n_steps=view.shape[0], seed=2)
    nodes = torch.as_tensor(dens.nodes[0]).double()
    assert float(nodes.max()) == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-6)


def test_groups_errors(block_hessian):
    model, loss, batches, names, *_ = block_hessian
    H = Hessian(model, loss, batches, params=names)
    with pytest.raises(CurvatureError, match=r"matches none"):
        H.groups(r"layers\.(\d+)")
    with pytest.raises(CurvatureError, match=r"not a regular expression"):
        H.groups(r"blocks\.(")
    with pytest.raises(CurvatureError, match=r"prefix 'blocks.1'"):
        H.groups(["blocks.1"])
    with pytest.raises(CurvatureError, match=r"regex string or a non-empty list"):
        H.groups([])


# ---------------------------------------------------------------------------- dict batches everywhere
def test_dict_batches_in_gradient_slices_and_loaders():
    model, loss, batches = make_lm(), causal_lm(), lm_batches(pad=True)
    names = [n for n, _ in model.named_parameters()]
    theta = flat_params(model, names)
    sizes = [b["input_ids"].shape[0] for b in batches]

    def L(th):
        f = lambda *a, **k: functional_call(model, unflatten(model, names, th), a, k)  # noqa: E731
        return sum(n * loss(f, b) for n, b in zip(sizes, batches)) / sum(sizes)

    with reference_mode():
        g_ref = torch.func.grad(L)(theta)
        l_ref = float(L(theta))
    torch.testing.assert_close(gradient(model, loss, batches), g_ref, rtol=1e-12, atol=1e-14)
    assert mean_loss(model, loss, batches) == pytest.approx(l_ref, rel=1e-13)
    d = g_ref / g_ref.norm()
    with reference_mode():
        direct = [float(L(theta + k * d)) for k in (-0.5, 0.0, 0.5)]
    assert loss_slice(model, loss, batches, d, [-0.5, 0.0, 0.5]).tolist() == pytest.approx(direct, rel=1e-12)
    samples = [{"input_ids": b} for b in batches[1]["input_ids"]]
    loader = torch.utils.data.DataLoader(samples, batch_size=2)
    H = Hessian(model, loss, loader, cache_graph=False)  # every product is a pass over the loader
    v = torch.ones(H.shape[0], dtype=torch.float64)
    expected = Hessian(model, loss, list(loader)) @ v
    for _ in range(2):
        torch.testing.assert_close(H @ v, expected, rtol=1e-13, atol=1e-15)
    shuffled = torch.utils.data.DataLoader(samples, batch_size=2, shuffle=True,
                                           generator=torch.Generator().manual_seed(0))
    H = Hessian(model, loss, shuffled, cache_graph=False)
    with pytest.raises(CurvatureError, match=r"batches changed between two passes"):
        for _ in range(6):  # a reshuffle that changes a batch is caught by the dict batches' fingerprints
            H @ v
    with pytest.raises(CurvatureError, match=r"single dict batch"):
        Hessian(model, loss, batches[0])


def test_analyze_model_on_dict_batches_with_groups():
    model, batches = make_lm(n_blocks=1), lm_batches(sizes=(2,), pad=True)
    settings = {"trace": {"max_matvecs": 3}, "eigen": {"max_iter": 6, "n_points": 3, "slices": ["requantized_unit"]},
                "density": {"n_runs": 1, "n_steps": 4, "grid_points": 8}}
    out = analyze_model(model, {"ce": causal_lm()}, batches, analyses=("trace", "eigen", "density"),
                        settings=settings, groups=r"blocks\.(\d+)\.(attn|mlp)", qkv=True)
    tr = out["trace"][out["trace"]["metric"] == "trace"]
    groups = ["group:0.attn", "group:0.attn.q", "group:0.attn.k", "group:0.attn.v", "group:0.mlp"]
    assert list(tr["layer"]) == ["all", *groups]
    H = Hessian(model, causal_lm(), batches)
    seed = int(tr["probe_seed"].iloc[0])
    for layer, view in H.groups(r"blocks\.(\d+)\.(attn|mlp)", qkv=True).items():  # the rows are these views' estimates
        assert float(tr[tr["layer"] == "group:" + layer]["value"].iloc[0]) == pytest.approx(
            view.trace(max_matvecs=3, seed=seed).value, rel=1e-10)
    eig = out["eigen"][out["eigen"]["metric"] == "top_eigenvalue"]
    assert list(eig["layer"]) == ["all", *groups]
    assert set(out["density"]["layer"]) == {"all", *groups}
    with pytest.raises(AnalysisError, match=r"groups=.*matches none"):
        analyze_model(model, {"ce": causal_lm()}, batches, analyses=("trace",), groups=r"layers\.(\d+)")
