"""frozen_rounding: inside the block the loss is F(θ') = L(θ'; rounding offsets of θ), the
function whose gradient and Hessian the identity STE reports (checked against the curvature
engine's Hessian by second differences in float64); outside, the loss re-quantizes."""

import pytest
import torch
from torch import nn

from landscape.curvature import Hessian
from landscape.losses import cross_entropy
from landscape.quant import FrozenRoundingError, calibrate, frozen_rounding, quantize_model

LOSS = cross_entropy()


def tiny_student():
    """A calibrated W4A4 conv-BN-ReLU-conv-ReLU-linear student in float64 and two batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    student = quantize_model(model, 4, 4)
    batches = [(torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (6,))) for _ in range(2)]
    calibrate(student, batches)
    return student, batches


@pytest.fixture(scope="module")
def setup():
    return tiny_student()


def mean_loss(model, batches, create_graph=False):
    with torch.set_grad_enabled(create_graph):
        return sum(len(b[1]) * LOSS(model, b) for b in batches) / sum(len(b[1]) for b in batches)


def shifted(model, d, h, batches):
    """L at θ + h·d (d flat over all parameters), θ restored afterwards."""
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            i = 0
            for p in params:
                p.add_(d[i:i + p.numel()].view_as(p), alpha=h)
                i += p.numel()
        return float(mean_loss(model, batches))
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, saved):
                p.copy_(p0)


def second_difference(model, d, h, batches):
    return (shifted(model, d, h, batches) - 2 * shifted(model, d, 0.0, batches)
            + shifted(model, d, -h, batches)) / h ** 2


def test_loss_and_gradient_at_theta_are_the_ste_ones(setup):
    student, batches = setup
    outside = mean_loss(student, batches, create_graph=True)
    g_out = torch.autograd.grad(outside, list(student.parameters()))
    with frozen_rounding(student, batches):
        inside = mean_loss(student, batches, create_graph=True)
        g_in = torch.autograd.grad(inside, list(student.parameters()))
        reversed_order = mean_loss(student, batches[::-1])  # batches are found by value
    assert inside.item() == outside.item()  # bit for bit: the same w + c, a + c
    assert reversed_order.item() == pytest.approx(outside.item(), rel=1e-15)
    for a, b in zip(g_in, g_out):
        assert torch.equal(a, b)


def test_second_difference_inside_equals_the_ste_hessian(setup):
    """(F(θ+hd) − 2F(θ) + F(θ−hd))/h² → dᵀHd inside the block; the re-quantized loss outside
    is piecewise constant in the weights and its second difference is far from it."""
    student, batches = setup
    H = Hessian(student, LOSS, batches)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        d = torch.randn(H.shape[0], generator=gen, dtype=torch.float64)
        d /= d.norm()
        dHd = float(d @ (H @ d))
        with frozen_rounding(student, batches):
            frozen = second_difference(student, d, 1e-3, batches)
            H_in = Hessian(student, LOSS, batches)  # the engine inside the block: the same H
            assert torch.allclose(H_in @ d, H @ d, rtol=0, atol=1e-12)
        requantized = second_difference(student, d, 1e-2, batches)
        assert abs(frozen - dHd) < 1e-6 * max(1.0, abs(dHd))
        assert abs(requantized - dHd) > 0.5 * abs(dHd) + 0.1


def test_mismatches_are_errors_and_the_model_is_restored(setup):
    student, batches = setup
    before = mean_loss(student, batches)
    hooks = (len(student._forward_pre_hooks), len(student._forward_hooks))
    with frozen_rounding(student, batches):
        with pytest.raises(FrozenRoundingError, match=r"input of shape \(3, 1, 8, 8\) that is not one of the 2 batches"):
            student(batches[0][0][:3])
        with pytest.raises(FrozenRoundingError, match="not one of the 2 batches"):
            student(batches[0][0] + 1)  # same shape, other values
        with pytest.raises(FrozenRoundingError, match=r"activation quantizer 2.quant, call 1 on batch \d: input of "
                                                      r"shape \(1, 3, 5, 5\), but \(6, 3, 6, 6\)"):
            student[2](torch.zeros(1, 3, 5, 5, dtype=torch.float64))  # a replayed call, another shape
        student.train()
        with pytest.raises(FrozenRoundingError, match="modes .* differ .* train mode now"):
            student(batches[0][0])
        student.eval()
        with pytest.raises(FrozenRoundingError, match="already inside"):
            with frozen_rounding(student, batches):
                pass
    with pytest.raises(KeyError):
        with frozen_rounding(student, batches):
            raise KeyError("boom")  # an error inside the block: still restored
    assert (len(student._forward_pre_hooks), len(student._forward_hooks)) == hooks
    assert all("_frozen" not in m.__dict__ for m in student.modules())
    assert mean_loss(student, batches).item() == before.item()
    shifted_out = student(2 * batches[0][0])  # outside: any input again
    assert torch.isfinite(shifted_out).all()
    with pytest.raises(FrozenRoundingError, match="no quantized layer"):
        with frozen_rounding(nn.Linear(2, 2), batches):
            pass


def test_recording_leaves_ranges_and_batchnorm_statistics_alone(setup):
    student, batches = setup
    trained = quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()).double(), 4, 4)
    calibrate(trained, batches)
    trained.train()
    trained[2].quant.calibrating = True
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    with frozen_rounding(trained, batches):
        pass
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in state.items())
