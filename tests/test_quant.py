"""Fake quantization: the weight grids (integral zero point as the official code, float as an
option) and their dequantization contract, the STE's first and second derivatives, which
modules get quantized, activation ranges (EMA during calibration, frozen after)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.config import RecipeError
from landscape.models import ResNet20, SmallCNN
from landscape.errors import LandscapeError
from landscape.quant import (ActQuant, QuantConv2d, QuantizationError, QuantizerError, QuantLinear, calibrate,
                             calibrating, check_dequantization, integer_codes, quantize_model,
                             quantized_layers)
from landscape.quant.functional import dequantize, quantize, weight_codes, weight_qparams


@pytest.mark.parametrize("zero_point", ["integral", "float"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_dequantization_check(bits, zero_point):
    torch.manual_seed(bits)
    student = quantize_model(SmallCNN(1, 10, 4), bits, bits, weight_zero_point=zero_point)
    rows = check_dequantization(student)
    assert [r["layer"] for r in rows] == [n for n, _ in quantized_layers(student)]
    for r in rows:
        assert r["zero_point"] == zero_point
        assert -(2 ** (bits - 1)) <= r["code_min"] <= r["code_max"] <= 2 ** (bits - 1) - 1
        assert r["max_error_over_scale"] <= 0.5 + (1e-4 if bits < 16 else 0.05)
        if zero_point == "float":
            assert r["n_clipped"] == 0
    if zero_point == "integral" and bits <= 4:  # the anchored grid does clip some extremes
        assert sum(r["n_clipped"] for r in rows) > 0
    for name, q in integer_codes(student).items():
        assert q.dtype == torch.long
    # per channel, the extremes map to the ends of the code range (both grids, barring an exact tie)
    w = student.fc.weight
    q = weight_codes(w, bits, zero_point)
    assert (q.min(1).values == -(2 ** (bits - 1))).all() and (q.max(1).values == 2 ** (bits - 1) - 1).all()


def test_dequantization_check_catches_a_broken_quantizer(monkeypatch):
    student = quantize_model(SmallCNN(1, 10, 4), 4, 4)
    monkeypatch.setattr(QuantLinear, "quantized_weight", lambda self: self.weight * 1.1)
    with pytest.raises(QuantizationError, match="fc: forward weight differs"):
        check_dequantization(student)


def test_dequantize_formula():
    w = torch.randn(3, 7)
    scale, zp = weight_qparams(w, 4)
    q = quantize(w, scale, zp, 4)
    assert torch.allclose(dequantize(q, scale, zp), scale * (q - zp))
    assert ((w - dequantize(q, scale, zp)).abs() <= scale / 2 + 1e-6).all()


def test_every_conv_and_linear_quantized_and_an_act_quantizer_after_each_relu():
    teacher = ResNet20(3, 10)
    student = quantize_model(teacher, 4, 4)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in teacher.modules())
    n_lin = sum(isinstance(m, nn.Linear) for m in teacher.modules())
    n_relu = sum(isinstance(m, nn.ReLU) for m in teacher.modules())
    layers = quantized_layers(student)
    assert len(layers) == n_conv + n_lin and layers[0][0] == "stem.0" and layers[-1][0] == "fc"
    assert sum(isinstance(m, ActQuant) for m in student.modules()) == n_relu
    assert not any(isinstance(m, (QuantConv2d, ActQuant)) for m in teacher.modules())  # a copy
    assert not student.training
    # the teacher's state dict loads into the student (same keys for the FP weights)
    missing = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not missing.unexpected_keys


@pytest.mark.parametrize("bits", [1, 17])
def test_bits_out_of_range(bits):
    # a Python call's mistake is a QuantizerError (LandscapeError, ValueError) naming the argument, not a RecipeError
    with pytest.raises(QuantizerError, match=f"w_bits = {bits} is out of range; bits must be an integer from 2 to 16"):
        quantize_model(SmallCNN(), bits, 4)
    with pytest.raises(QuantizerError, match=f"a_bits = {bits} is out of range"):
        quantize_model(SmallCNN(), 4, bits)
    assert issubclass(QuantizerError, LandscapeError) and issubclass(QuantizerError, ValueError)
    assert not issubclass(QuantizerError, RecipeError)


def test_activation_range_ema_during_calibration_then_frozen():
    torch.manual_seed(0)
    student = quantize_model(SmallCNN(1, 10, 4), 4, 4)
    act = [m for m in student.modules() if isinstance(m, ActQuant)][0]
    x1, x2 = torch.randn(8, 1, 8, 8), 3 * torch.randn(8, 1, 8, 8)
    calibrate(student, [x1])
    hi1 = act.hi.clone()
    calibrate(student, [x2])
    with torch.no_grad():
        h2 = F.relu(student.features[0][1](student.features[0][0](x2)))
    assert torch.allclose(act.hi, 0.9 * hi1 + 0.1 * h2.max(), atol=1e-6)
    frozen = act.hi.clone()
    student(5 * x2)  # not calibrating: the range stays
    assert torch.equal(act.hi, frozen)
    with calibrating(student):
        assert act.calibrating
    assert not act.calibrating


def _tiny_student():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    student = quantize_model(model, 3, 4)
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    calibrate(student, [x])
    return student, x, y


def _dequantized_reference(student):
    """The same network with the dequantized weights as plain FP weights (activation
    quantizers kept), so its derivatives are those of the dequantized-weight loss."""
    ref = copy.deepcopy(student)
    for _, m in quantized_layers(ref):
        with torch.no_grad():
            m.weight.copy_(m.quantized_weight())
        m.__class__ = nn.Linear
    return ref


def test_ste_gradient_and_second_derivative_equal_those_of_the_dequantized_weights():
    student, x, y = _tiny_student()
    ref = _dequantized_reference(student)
    names = [n + ".weight" for n, _ in quantized_layers(student)]
    params_s = dict(student.named_parameters())
    params_r = dict(ref.named_parameters())

    def loss_of(model, params):
        def f(*ws):
            return F.cross_entropy(torch.func.functional_call(model, dict(zip(names, ws)), (x,)), y)
        return f

    ws = tuple(params_s[n].detach() for n in names)
    wr = tuple(params_r[n].detach() for n in names)
    assert all(not torch.equal(a, b) for a, b in zip(ws, wr))  # quantization does change them
    gs = torch.autograd.grad(loss_of(student, params_s)(*(w.requires_grad_() for w in ws)), ws)
    gr = torch.autograd.grad(loss_of(ref, params_r)(*(w.requires_grad_() for w in wr)), wr)
    for a, b in zip(gs, gr):
        assert torch.allclose(a, b, atol=1e-12)
    hs = torch.autograd.functional.hessian(loss_of(student, params_s), tuple(w.detach() for w in ws))
    hr = torch.autograd.functional.hessian(loss_of(ref, params_r), tuple(w.detach() for w in wr))
    total = 0.0
    for row_s, row_r in zip(hs, hr):
        for a, b in zip(row_s, row_r):
            assert torch.allclose(a, b, atol=1e-12)
            total += a.abs().sum().item()
    assert total > 0  # a real second derivative, not a trivially zero one


def test_ste_double_backward_hvp():
    """The curvature engine's double-backward HVP goes through the STE."""
    student, x, y = _tiny_student()
    ref = _dequantized_reference(student)

    def hvp(model):
        params = [p for n, p in model.named_parameters() if n.endswith("weight")]
        loss = F.cross_entropy(model(x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.ones_like(p) for p in params]
        return torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), params)

    for a, b in zip(hvp(student), hvp(ref)):
        assert torch.allclose(a, b, atol=1e-12)
