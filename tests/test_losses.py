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
