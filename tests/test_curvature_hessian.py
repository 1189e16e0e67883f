"""The Hessian operator against the exact Hessian (torch.func.hessian), float64."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import exact_hessian, make_batches, make_model
from landscape.curvature import CurvatureError, CurvatureWarning, Hessian
from landscape.losses import cross_entropy, distillation, kl_to_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.fixture(params=["ce", "kl", "ce+kl"])
def loss_fn(request, teacher):
    return {
        "ce": cross_entropy(),
        "kl": kl_to_teacher(teacher, temperature=4.0),
        "ce+kl": distillation(teacher, temperature=4.0, ce_scale=1.0, kd_scale=0.5, reduction="mean"),
    }[request.param]


def test_hvp_matches_exact(model, loss_fn):
    batches = make_batches([6])
    Hx, _, _ = exact_hessian(model, loss_fn, batches)
    H = Hessian(model, loss_fn, batches)
    assert H.shape == Hx.shape
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(H.shape[0], generator=g, dtype=torch.float64)
        assert rel(H @ v, Hx @ v) < 1e-10
    V = torch.randn(H.shape[0], 5, generator=g, dtype=torch.float64)
    assert rel(H @ V, Hx @ V) < 1e-10
    assert H.n_matvecs == 8
    assert rel(H.dense(), Hx) < 1e-10


@pytest.mark.parametrize("cache", ["auto", True, False, "tiny-budget", "partial"])
def test_unequal_batches_weighted_by_size(model, teacher, cache):
    loss = kl_to_teacher(teacher, temperature=2.0)
    batches = make_batches([5, 2, 3])
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    Hx, _, _ = exact_hessian(model, loss, [(x, y)])
    if cache == "tiny-budget":  # nothing fits: every product recomputes every batch's graph
        H = Hessian(model, loss, batches, cache_graph="auto", memory_budget=1)
    elif cache == "partial":  # the first batch (5 of 10 samples) fits, the others are recomputed
        probe = Hessian(model, loss, batches, cache_graph="auto")
        probe @ torch.zeros(probe.shape[0], dtype=torch.float64)
        assert probe.n_cached == 3 and probe.cached_bytes > 0
        H = Hessian(model, loss, batches, cache_graph="auto", memory_budget=int(probe.cached_bytes * 0.6))
        H @ torch.zeros(H.shape[0], dtype=torch.float64)
        assert H.n_cached == 1 and not H.cache_complete
    else:
        H = Hessian(model, loss, batches, cache_graph=cache)
    V = torch.randn(H.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert rel(H @ V, Hx @ V) < 1e-10
    assert rel(H @ V[:, 0], Hx @ V[:, 0]) < 1e-10
    # a plain unweighted average of the per-batch Hessians would be measurably different
    Hb = [exact_hessian(model, loss, [b])[0] for b in batches]
    assert rel(sum(Hb) / 3 @ V, Hx @ V) > 1e-3


def test_dataloader_and_generator_batches(model):
    batches = make_batches([4, 4])
    ds = torch.utils.data.TensorDataset(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False)
    Hx, _, _ = exact_hessian(model, cross_entropy(), batches)
    v = torch.randn(Hx.shape[0], dtype=torch.float64)
    for src in (loader, (b for b in batches)):
        H = Hessian(model, cross_entropy(), src, cache_graph=False)
        assert rel(H @ v, Hx @ v) < 1e-10
        assert rel(H @ v, Hx @ v) < 1e-10  # a second pass over a one-shot generator still works


@pytest.mark.parametrize("select", ["names", "module", "tensors", "module-name"])
def test_params_subset_is_block_of_exact(model, teacher, select):
    loss = kl_to_teacher(teacher, temperature=3.0)
    batches = make_batches([6])
    names = ["conv.weight", "conv.bias", "fc.weight"]
    Hx, _, _ = exact_hessian(model, loss, batches)
    all_names = [n for n, _ in model.named_parameters()]
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    offs = np.cumsum([0] + [sizes[n] for n in all_names])
    if select == "names":
        params, chosen = names, names
    elif select == "tensors":
        params, chosen = [model.conv.weight, model.fc.weight], ["conv.weight", "fc.weight"]
    elif select == "module":
        params, chosen = [model.conv], ["conv.weight", "conv.bias"]
    else:
        params, chosen = "fc", ["fc.weight", "fc.bias"]
    idx = torch.cat([torch.arange(offs[all_names.index(n)], offs[all_names.index(n) + 1]) for n in chosen])
    block = Hx[idx][:, idx]
    H = Hessian(model, loss, batches, params=params)
    assert H.names == chosen
    assert H.shape == block.shape
    v = torch.randn(H.shape[0], dtype=torch.float64)
    assert rel(H @ v, block @ v) < 1e-10
    # the per-layer exact Hessian from torch.func agrees as well
    Hsub, _, _ = exact_hessian(model, loss, batches, names=chosen)
    assert rel(Hsub, block) < 1e-12


def test_no_side_effects(model, teacher):
    loss = distillation(teacher, temperature=2.0, ce_scale=1.0, kd_scale=1.0)
    batches = make_batches([6])
    model.train()
    model.bn.eval()  # a mixed mode must come back exactly as it was
    teacher.train()
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    modes = [m.training for m in model.modules()]
    H = Hessian(model, loss, batches)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    H @ v
    H.trace(max_matvecs=4)
    H.eigenpairs(k=1, max_iter=3)
    H.eigenpairs(k=1, method="lanczos", max_iter=3)
    H.density(n_steps=3)
    assert [m.training for m in model.modules()] == modes
    assert all(m.training for m in teacher.modules())
    assert model.conv.weight.grad is None and model.bn.weight.grad is None
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 7.0))
    assert all(p.grad is None for p in teacher.parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n  # BN statistics untouched although the model was in train mode


def test_eval_mode_false_uses_batch_statistics(model):
    batches = make_batches([6])
    model.train()
    stats = [b.clone() for b in model.buffers()]
    H_eval = Hessian(model, cross_entropy(), batches)
    H_train = Hessian(model, cross_entropy(), batches, eval_mode=False)
    v = torch.randn(H_eval.shape[0], dtype=torch.float64)
    Hv_train = H_train @ v
    assert rel(H_eval @ v, Hv_train) > 1e-3
    assert rel(H_train @ v, Hv_train) < 1e-12  # cached graph reused, not invalidated by BN's update
    assert H_train.n_rebuilds == 1  # BN's running statistics and counter did not trip the check
    for b, s in zip(model.buffers(), stats):
        assert torch.equal(b, s)  # train-mode BatchNorm statistics restored
    model.eval()
    Hx, _, _ = exact_hessian(model, cross_entropy(), batches)
    assert rel(H_eval @ v, Hx @ v) < 1e-10


def test_stale_cache_is_rebuilt_after_in_place_update(model):
    batches = make_batches([6])
    H = Hessian(model, cross_entropy(), batches)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    H @ v
    with torch.no_grad():
        model.fc.weight.mul_(1.5)
    Hx, _, _ = exact_hessian(model, cross_entropy(), batches)
    assert rel(H @ v, Hx @ v) < 1e-10


def test_unused_parameter_zero_curvature_one_warning(model):
    model.extra = nn.Linear(3, 3).double()  # never used in forward
    batches = make_batches([6])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        H = Hessian(model, cross_entropy(), batches)
        v = torch.randn(H.shape[0], dtype=torch.float64)
        Hv = H @ v
        H @ v
        H.clear_cache()
        H @ v
    msgs = [str(w.message) for w in rec if issubclass(w.category, CurvatureWarning)]
    assert len(msgs) == 1 and "extra.weight" in msgs[0] and "extra.bias" in msgs[0]
    n_extra = 12
    assert torch.all(Hv[-n_extra:] == 0)
    Hx, _, _ = exact_hessian(model, cross_entropy(), batches, names=[n for n, _ in model.named_parameters()][:-2])
    assert rel(Hv[:-n_extra], Hx @ v[:-n_extra]) < 1e-10


def test_as_linear_operator(model):
    batches = make_batches([6])
    H = Hessian(model, cross_entropy(), batches)
    Hx, _, _ = exact_hessian(model, cross_entropy(), batches)
    op = H.as_linear_operator()
    x = np.random.default_rng(0).standard_normal(H.shape[0])
    assert op.shape == H.shape and op.dtype == np.float64
    np.testing.assert_allclose(op @ x, (Hx @ torch.from_numpy(x)).numpy(), rtol=1e-10, atol=1e-12)
    X = np.random.default_rng(1).standard_normal((H.shape[0], 2))
    np.testing.assert_allclose(op @ X, (Hx @ torch.from_numpy(X)).numpy(), rtol=1e-10, atol=1e-12)


def test_float32_model():
    m = make_model(0).float()
    batches = [(x.float(), y) for x, y in make_batches([6])]
    H = Hessian(m, cross_entropy(), batches)
    assert H.dtype == torch.float32
    Hx, _, _ = exact_hessian(make_model(0), cross_entropy(), make_batches([6]))
    v = torch.randn(H.shape[0])
    assert rel((H @ v).double(), Hx @ v.double()) < 1e-4


# ------------------------------------------------------------------ bad input: one clear error
def test_error_non_scalar_loss(model):
    def per_sample(m, b):
        return torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")

    H = Hessian(model, per_sample, make_batches([6]))
    with pytest.raises(CurvatureError, match=r"scalar.*shape \(6,\).*batch 0"):
        H @ torch.zeros(H.shape[0], dtype=torch.float64)


def test_error_nan_loss_names_batch(model):
    batches = make_batches([3, 3, 3])
    batches[2][0][0, 0, 0, 0] = float("nan")
    H = Hessian(model, cross_entropy(), batches)
    with pytest.raises(CurvatureError, match=r"not finite.*batch 2"):
        H @ torch.zeros(H.shape[0], dtype=torch.float64)
    def inf_on_small_batch(m, b):
        loss = torch.nn.functional.cross_entropy(m(b[0]), b[1])
        return loss * float("inf") if b[0].shape[0] == 2 else loss

    batches = make_batches([3, 2])
    with pytest.raises(CurvatureError, match=r"inf.*not finite.*batch 1"):
        Hessian(model, inf_on_small_batch, batches, cache_graph=False) @ torch.zeros(H.shape[0], dtype=torch.float64)


def test_error_no_batches(model):
    with pytest.raises(CurvatureError, match="no batches"):
        Hessian(model, cross_entropy(), [])
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 2), torch.zeros(0)))
    with pytest.raises(CurvatureError, match="no batches"):
        Hessian(model, cross_entropy(), empty)
    with pytest.raises(CurvatureError, match="single"):
        Hessian(model, cross_entropy(), make_batches([2])[0])


def test_error_bad_vectors(model):
    H = Hessian(model, cross_entropy(), make_batches([4]))
    n = H.shape[0]
    with pytest.raises(CurvatureError, match=f"length {n}.*shape \\({n + 1},\\)"):
        H @ torch.zeros(n + 1, dtype=torch.float64)
    with pytest.raises(CurvatureError, match="dtype torch.float64.*torch.float32"):
        H @ torch.zeros(n)
    with pytest.raises(CurvatureError, match="device"):
        H @ torch.zeros(n, dtype=torch.float64, device="meta")
    with pytest.raises(CurvatureError, match="torch.Tensor"):
        H @ np.zeros(n)
    with pytest.raises(CurvatureError, match=r"k=\d+ is larger than the dimension"):
        H.eigenpairs(k=n + 1)
    with pytest.raises(CurvatureError, match=r"k=\d+ is larger than the dimension"):
        H.eigenpairs(k=n + 1, method="lanczos")
    with pytest.raises(CurvatureError, match="unknown method 'arnoldi'"):
        H.eigenpairs(method="arnoldi")
    with pytest.raises(CurvatureError, match="unknown method 'exact'"):
        H.trace(method="exact")
    with pytest.raises(CurvatureError, match="unknown which"):
        H.eigenpairs(which="SA")
    with pytest.raises(CurvatureError, match="cache_graph"):
        Hessian(model, cross_entropy(), make_batches([4]), cache_graph="yes")
    with pytest.raises(CurvatureError, match="'nope' is neither"):
        Hessian(model, cross_entropy(), make_batches([4]), params=["nope"])


def test_error_loss_raising_inside_torch_names_batch(model):
    def bad(m, b):
        return torch.nn.functional.cross_entropy(m(b[0][:, :1]), b[1])  # wrong channel count

    H = Hessian(model, bad, make_batches([4]))
    with pytest.raises(CurvatureError, match="loss_fn raised on batch 0"):
        H @ torch.zeros(H.shape[0], dtype=torch.float64)
