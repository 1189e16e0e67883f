"""landscape.losses: CE, the distillation KL (both reductions) and their combination."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_batches, make_model
from landscape.losses import ce, cross_entropy, distillation, distillation_loss, kl_divergence, kl_to_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=g)
    return s, t, y


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides")
@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_kl_reductions_match_definitions(logits, T):
    s, t, y = logits
    p = F.softmax(t / T, dim=1)
    manual = (p * (p.log() - F.log_softmax(s / T, dim=1))).sum(dim=1).mean() * T * T
    assert torch.allclose(kl_divergence(s, t, T, "batchmean"), manual, rtol=1e-12)
    # "mean" is nn.KLDivLoss()'s default element-wise mean, as in the official AIT code
    official = nn.KLDivLoss()(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1)) * T * T
    assert torch.allclose(kl_divergence(s, t, T, "mean"), official, rtol=1e-12)
    assert torch.allclose(kl_divergence(s, t, T, "mean") * 5, manual, rtol=1e-12)


def test_kl_is_zero_at_teacher_and_nonnegative(logits):
    s, t, _ = logits
    assert abs(float(kl_divergence(t.clone(), t, 3.0))) < 1e-12
    assert float(kl_divergence(s, t, 3.0)) > 0


def test_ce_and_distillation_loss(logits):
    s, t, y = logits
    assert torch.allclose(ce(s, y), F.cross_entropy(s, y))
    combo = distillation_loss(s, y, t, 4.0, ce_scale=0.3, kd_scale=2.0, reduction="mean")
    assert torch.allclose(combo, 0.3 * ce(s, y) + 2.0 * kl_divergence(s, t, 4.0, "mean"), rtol=1e-12)
    assert torch.allclose(distillation_loss(s, y, t, 4.0, ce_scale=0.0, kd_scale=1.0), kl_divergence(s, t, 4.0))


def test_loss_objects_names_repr_and_values():
    student, teacher = make_model(0), make_model(1)
    x, y = make_batches([6])[0]
    assert cross_entropy().name == "ce" and repr(cross_entropy()) == "cross_entropy()"
    kl = kl_to_teacher(teacher, temperature=20, reduction="mean")
    assert kl.name == "kl"
    assert repr(kl) == "kl_to_teacher(teacher=TinyCNN, temperature=20, reduction='mean')"
    d = distillation(teacher, 4.0, ce_scale=1.0, kd_scale=1.0)
    assert d.name == "ce+kl" and distillation(teacher, 4.0, ce_scale=0, kd_scale=1).name == "kl"
    assert "ce_scale=1" in repr(d)
    with torch.no_grad():
        s, t = student(x), teacher(x)
    assert torch.allclose(cross_entropy()(student, (x, y)), F.cross_entropy(s, y))
    assert torch.allclose(kl(student, (x, y)), kl_divergence(s, t, 20.0, "mean"))
    assert torch.allclose(d(student, (x, y)), F.cross_entropy(s, y) + kl_divergence(s, t, 4.0))


def test_teacher_gets_no_gradient_and_keeps_its_mode():
    student, teacher = make_model(0), make_model(1)
    teacher.train()
    x, y = make_batches([6])[0]
    with torch.no_grad():
        t_eval = teacher.eval()(x)
    teacher.train()
    loss = kl_to_teacher(teacher, temperature=2.0)(student, (x, y))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.fc.weight.grad is not None
    assert all(m.training for m in teacher.modules())
    with torch.no_grad():
        expected = kl_divergence(student(x), t_eval, 2.0)  # teacher evaluated in eval mode
    assert math.isclose(float(loss), float(expected), rel_tol=1e-12)


def test_bad_arguments():
    teacher = make_model(1)
    with pytest.raises(ValueError, match="reduction"):
        kl_to_teacher(teacher, 1.0, reduction="sum")
    with pytest.raises(ValueError, match="temperature"):
        kl_to_teacher(teacher, 0.0)
    with pytest.raises(ValueError, match="both 0"):
        distillation(teacher, 1.0, ce_scale=0, kd_scale=0)
    with pytest.raises(TypeError, match="teacher"):
        kl_to_teacher("resnet20")
    with pytest.raises(ValueError, match="shape"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------------------- output-space Hessians
@pytest.mark.parametrize("which", ["ce", "kl-batchmean", "kl-mean", "ce+kl"])
def test_output_hessian_matches_torch_func(which):
    teacher = make_model(1)
    x, y = make_batches([5])[0]
    loss = {
        "ce": cross_entropy(),
        "kl-batchmean": kl_to_teacher(teacher, temperature=3.0),
        "kl-mean": kl_to_teacher(teacher, temperature=20.0, reduction="mean"),
        "ce+kl": distillation(teacher, temperature=2.0, ce_scale=0.5, kd_scale=2.0, reduction="mean"),
    }[which]
    f = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    student = make_model(0)
    with torch.no_grad():
        assert torch.allclose(loss.on_outputs(student(x), (x, y)), loss(student, (x, y)), rtol=1e-14)
    exact = torch.func.hessian(lambda g: loss.on_outputs(g.reshape(5, 4), (x, y)))(f.reshape(-1)).reshape(5, 4, 5, 4)
    M = loss.output_hessian(f, (x, y))
    blocks = M.dense()
    for i in range(5):
        assert torch.allclose(blocks[i], exact[i, :, i, :], rtol=1e-10, atol=1e-14)
        for j in range(5):
            if i != j:
                assert torch.all(exact[i, :, j, :].abs() < 1e-14)  # block-diagonal over samples
    w = torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(M.apply(w), torch.einsum("icjd,jd->ic", exact, w), rtol=1e-10, atol=1e-14)
    G = M.fisher_factors()  # exact expectation over classes: Σ_k G Gᵀ = the output Hessian
    assert torch.allclose(torch.einsum("kic,kid->icd", G, G), blocks, rtol=1e-10, atol=1e-14)


def test_output_hessian_of_kl_does_not_depend_on_the_teacher_or_T_squared():
    x, y = make_batches([3])[0]
    f = torch.randn(3, 4, dtype=torch.float64)
    a = kl_to_teacher(make_model(1), temperature=5.0).output_hessian(f, (x, y)).dense()
    b = kl_to_teacher(make_model(2), temperature=5.0).output_hessian(f, (x, y)).dense()
    s = F.softmax(f / 5.0, dim=1)
    assert torch.equal(a, b)
    assert torch.allclose(a, (torch.diag_embed(s) - s[:, :, None] * s[:, None, :]) / 3, rtol=1e-12)
    with pytest.raises(ValueError, match="2-D logits"):
        cross_entropy().output_hessian(torch.zeros(2, 3, 4), (x, y))
