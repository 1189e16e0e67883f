"""The weight grid: integral zero point (the official GDFQ/AIT arithmetic, written here
independently from its formulas) and float zero point; the exact clipping bound on adversarial
weights; the max == min guard; each layer's own kind in codes and checks."""

import pytest
import torch
from torch import nn

from landscape.quant import check_dequantization, integer_codes, quantize_model, quantized_layers
from landscape.quant.functional import (dequantize, fake_quant_weight, quantize, weight_codes,
                                        weight_qparams)


def official(w, bits):
    """The official grid in its own notation: inverse step S, zero point zp, per output channel."""
    flat = w.reshape(w.shape[0], -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (w.dim() - 1)
    S = ((2 ** bits - 1) / torch.clamp(hi - lo, min=1e-8)).view(shape)
    zp = (torch.round(S.view(-1) * lo) + 2 ** (bits - 1)).view(shape)
    code = torch.clamp(torch.round(S * w - zp), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return code, (code + zp) / S


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (5, 40)])
def test_integral_grid_is_the_official_one(bits, shape):
    torch.manual_seed(bits)
    w = torch.randn(*shape, dtype=torch.float64) * torch.rand(shape[0], *[1] * (len(shape) - 1), dtype=torch.float64)
    code, w_hat = official(w, bits)
    assert torch.equal(weight_codes(w, bits), code.long())
    assert torch.allclose(fake_quant_weight(w, bits), w_hat, rtol=0, atol=1e-13)
    # the grid is anchored at 0: every dequantized weight is an integer multiple of the step
    s, z = weight_qparams(w, bits)
    assert torch.equal(z, z.round())
    k = w_hat / s
    assert (k - k.round()).abs().max() < 1e-9
    # the float grid is another one (anchored at min): its codes differ somewhere
    assert not torch.equal(weight_codes(w, bits, "float"), code.long())


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_clipping_bound_is_half_a_step_and_tight(bits):
    """min/s = r + δ with δ → +½ shifts the grid left by s·δ (the largest weights clipped by up
    to s/2); δ → −½ shifts it right (the smallest clipped). The error bound stays s/2."""
    n = 2 ** bits - 1
    eps = 1e-7
    rows, deltas = [], []
    for base, delta in ((3, 0.5 - eps), (-5, -0.5 + eps), (0, 0.25), (2, 0.0)):
        lo = (base + delta) * 0.01        # step s = 0.01 exactly: range n·s
        rows.append(torch.linspace(lo, lo + n * 0.01, 2001, dtype=torch.float64))
        deltas.append(delta)
    w = torch.stack(rows)
    s, z = weight_qparams(w, bits)
    assert torch.allclose(s, torch.full_like(s, 0.01), rtol=1e-12)
    w_hat = fake_quant_weight(w, bits)
    err = (w - w_hat).abs() / s
    assert err.max() <= 0.5 + 1e-9
    assert err[0].max() > 0.5 - 1e-5 and err[1].max() > 0.5 - 1e-5  # the bound is reached
    for i, delta in enumerate(deltas):
        # the grid is [min, max] shifted by −s·δ; the end beyond it is clipped by exactly s·|δ|
        end = -1 if delta > 0 else 0
        assert float(w[i, end] - w_hat[i, end]) == pytest.approx(0.01 * delta, abs=1e-12)
        assert float(w_hat[i, -1] - w_hat[i, 0]) == pytest.approx(n * 0.01, abs=1e-12)
    # the float grid on the same weights: ends exact, no clipping
    w_f = fake_quant_weight(w, bits, "float")
    assert torch.allclose(w_f[:, [0, -1]], w[:, [0, -1]], rtol=0, atol=1e-12)
    assert ((w - w_f).abs() / s).max() <= 0.5 + 1e-9
    # check_dequantization on a layer holding these weights: passes and counts the clipped ones
    layer = quantize_model(nn.Sequential(nn.Linear(2001, 4).double()), bits, bits)
    with torch.no_grad():
        layer[0].weight.copy_(w)
    (row,) = check_dequantization(layer)
    assert 0.5 - 1e-5 < row["max_error_over_scale"] <= 0.5 + 1e-6
    expected = int(((w / s + z) > 2 ** (bits - 1) - 1 + 1e-6).sum() + ((w / s + z) < -(2 ** (bits - 1)) - 1e-6).sum())
    assert row["n_clipped"] == expected > 0


@pytest.mark.parametrize("c", [0.0, 0.3, -1.7])
def test_constant_channel_guard(c):
    """max == min: the range is clamped to 1e-8 (step 1e-8/(2^b-1)), codes at the bottom."""
    bits = 4
    w = torch.full((2, 9), c, dtype=torch.float64)
    s, _ = weight_qparams(w, bits)
    assert torch.allclose(s, torch.full_like(s, 1e-8 / 15), rtol=1e-12)
    assert (weight_codes(w, bits) == -8).all()
    w_hat = fake_quant_weight(w, bits)
    code, w_off = official(w, bits)
    assert torch.allclose(w_hat, w_off, rtol=1e-15, atol=0) and (code == -8).all()
    assert ((w - w_hat).abs() <= s / 2 * (1 + 1e-6) + 1e-15).all()
    if c == 0.0:
        assert (w_hat == 0).all()
    assert torch.allclose(fake_quant_weight(w, bits, "float"), w, rtol=1e-12, atol=0)


def test_zero_point_option_reaches_modules_codes_and_checks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    student = quantize_model(model, 3, 8)
    assert {m.zero_point for _, m in quantized_layers(student)} == {"integral"}
    assert "zero_point='integral'" in repr(student[0])
    student[3].zero_point = "float"  # a mix of kinds: each layer is coded on its own grid
    codes = integer_codes(student)
    assert torch.equal(codes["0"], weight_codes(student[0].weight, 3, "integral"))
    assert torch.equal(codes["3"], weight_codes(student[3].weight, 3, "float"))
    assert [r["zero_point"] for r in check_dequantization(student)] == ["integral", "float"]
    w_hat = dequantize(quantize(student[3].weight, *weight_qparams(student[3].weight, 3, "float"), 3),
                       *weight_qparams(student[3].weight, 3, "float"))
    assert torch.allclose(student[3].quantized_weight(), w_hat, atol=1e-7)
    floats = quantize_model(model, 3, 8, weight_zero_point="float")
    assert {m.zero_point for _, m in quantized_layers(floats)} == {"float"}
    with pytest.raises(ValueError, match="zero_point must be 'integral'.*or 'float'.*got 'int'"):
        quantize_model(model, 3, 8, weight_zero_point="int")
    with pytest.raises(ValueError, match="got 'symmetric'"):
        weight_codes(student[0].weight, 3, "symmetric")
