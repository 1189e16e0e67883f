"""Weight-only and per-group quantization (issue 17): a_bits=None, group_size= on the uniform grid and
for LSQ, checked against scales and codes worked out by hand."""

import math

import pytest
import torch
from torch import nn

from landscape.errors import LandscapeError
from landscape.quant import (QuantizerError, check_dequantization, coverage_report, forward_weights, integer_codes,
                             quantize_model, weight_qparams)
from landscape.quant.quantizers import LSQ, UniformWeight
from landscape.schema import RecipeError

# rows of a 2x8 weight, groups of 4 along the input dimension
W = torch.tensor([[0.0, 0.4, 1.1, 3.0, -4.0, -1.0, 0.9, 2.0],
                  [1.0, 2.0, 4.0, 7.0, 0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
# 2 bits, integral grid: s = (max - min)/3, z = -round(min/s) - 2, q = clamp(round(w/s + z), -2, 1), ŵ = s(q - z)
#   [0, 0.4, 1.1, 3]:  s = 1, z = -2, q = [-2, -2, -1, 1]          -> ŵ = [0, 0, 1, 3]
#   [-4, -1, 0.9, 2]:  s = 2, z = 0,  q = [-2, 0 (tie: even), 0, 1] -> ŵ = [-4, 0, 0, 2]
#   [1, 2, 4, 7]:      s = 2, z = -round(0.5) - 2 = -2 (tie: even), q = [-2 (tie), -1, 0, 1 (7 clipped)] -> [0, 2, 4, 6]
#   [0.5] * 4:         constant: s = 1e-8/3, ŵ = s·round(0.5/s) (within s/2 of 0.5)
HAND = torch.tensor([[0.0, 0.0, 1.0, 3.0, -4.0, 0.0, 0.0, 2.0],
                     [0.0, 2.0, 4.0, 6.0, 0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
HAND_SCALE = torch.tensor([[1.0] * 4 + [2.0] * 4, [2.0] * 4 + [1e-8 / 3] * 4], dtype=torch.float64)


def _linear(weight: torch.Tensor) -> nn.Linear:
    fc = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(torch.arange(weight.shape[0], dtype=torch.float64))
    return fc


def test_weights_only_and_bad_bits_are_quantizer_errors():
    student = quantize_model(_linear(W), 4, None)
    assert coverage_report(student).covered == ["weight"] and coverage_report(student).a_bits is None
    for bad in (1, 17, 4.0, "4", True):
        with pytest.raises(QuantizerError, match="a_bits = .* is out of range.*or None: weights only") as err:
            quantize_model(_linear(W), 4, bad)
        assert isinstance(err.value, LandscapeError) and not isinstance(err.value, RecipeError)
    with pytest.raises(QuantizerError, match="w_bits = None is out of range"):
        quantize_model(_linear(W), None, None)


def test_group_scales_and_weights_by_hand():
    scale, _ = weight_qparams(W, 2, "integral", group_size=4)
    assert torch.allclose(scale, HAND_SCALE, rtol=1e-12, atol=0)
    fc = _linear(W)
    student = quantize_model(fc, 2, None, group_size=4)
    w_hat = student.quantized_weight()
    assert torch.allclose(w_hat, HAND, atol=1e-8, rtol=0)
    x = torch.randn(5, 8, dtype=torch.float64)
    assert torch.allclose(student(x), x @ w_hat.T + fc.bias, atol=1e-12, rtol=0)
    per_channel = quantize_model(fc, 2, None).quantized_weight()  # one range per row: not the same grid
    assert (per_channel - HAND).abs().max() > 0.5
    assert coverage_report(student).weight == "uniform_g4"
    # the spec name says the same; the STE: dŵ/dw = 1
    assert torch.equal(quantize_model(fc, 2, None, weight="uniform_g4").quantized_weight(), w_hat)
    (g,) = torch.autograd.grad(student(x).sum(), student.weight)
    assert torch.allclose(g, torch.ones(5, 2, dtype=torch.float64).T @ x, atol=1e-12, rtol=0)


def test_a_group_size_that_does_not_divide_the_input_gives_a_shorter_last_group():
    w = W[:, :6]  # groups [0, 4) and [4, 6): the last one holds two inputs, with its own range
    got = quantize_model(_linear(w), 2, None, group_size=4).quantized_weight()
    # [-4, -1]: s = 1, z = 4 - 2 = 2, q = [-2, 1] -> ŵ = [-4, -1];  [0.5, 0.5]: constant
    assert torch.allclose(got, torch.tensor([[0, 0, 1, 3, -4, -1], [0, 2, 4, 6, 0.5, 0.5]],
                                            dtype=torch.float64), atol=1e-8, rtol=0)
    # a group at least as long as the row is the per-channel quantizer, bit for bit
    fc = _linear(W)
    assert torch.equal(quantize_model(fc, 3, None, group_size=8).quantized_weight(),
                       quantize_model(fc, 3, None).quantized_weight())
    assert torch.equal(quantize_model(fc, 3, None, group_size=100).quantized_weight(),
                       quantize_model(fc, 3, None).quantized_weight())


def test_conv2d_groups_run_along_the_flattened_input():
    conv = nn.Conv2d(2, 3, 2).double()
    student = quantize_model(conv, 3, None, group_size=4)
    rows = conv.weight.detach().reshape(3, 8)
    expected = UniformWeight(3, group_size=4)(rows).reshape(conv.weight.shape)
    assert torch.equal(student.quantized_weight(), expected)
    assert torch.equal(UniformWeight(3, group_size=4)(rows[:, :4]), UniformWeight(3)(rows[:, :4]))


def test_lsq_learns_one_step_per_group():
    w = torch.cat([W, W[:, :2]], 1)  # 10 inputs: groups of 4, 4 and 2
    student = quantize_model(_linear(w), 3, None, weight="lsq", group_size=4)
    lsq = student.weight_quantizer
    assert isinstance(lsq, LSQ) and lsq.step.shape == (2, 3)
    q_p = 3  # 2^(3-1) - 1
    hand = torch.stack([w[:, 0:4].abs().mean(1), w[:, 4:8].abs().mean(1), w[:, 8:10].abs().mean(1)], 1)
    assert torch.allclose(lsq.step.detach(), 2 * hand / math.sqrt(q_p), rtol=1e-12, atol=0)
    s = lsq.step.detach().repeat_interleave(4, dim=1)[:, :10]
    v = w / s
    assert torch.allclose(student.quantized_weight(), torch.round(v.clamp(-4, 3)) * s, atol=1e-12, rtol=0)
    # ∂(Σŵ)/∂s_j = g_j Σ_(group j) (round(v) − v inside the range, −Q_N / Q_P outside), g_j = 1/√(N_j Q_P)
    (grad,) = torch.autograd.grad(student.quantized_weight().sum(), lsq.step)
    inner = torch.where(v <= -4, -4.0, torch.where(v >= 3, 3.0, torch.round(v) - v))
    sums = torch.stack([inner[:, 0:4].sum(1), inner[:, 4:8].sum(1), inner[:, 8:10].sum(1)], 1)
    n = torch.tensor([4.0, 4.0, 2.0], dtype=torch.float64)
    assert torch.allclose(grad, sums / torch.sqrt(n * q_p), atol=1e-12, rtol=0)
    fresh = quantize_model(_linear(torch.zeros_like(w) + 1), 3, None, weight="lsq", group_size=4)
    fresh.load_state_dict(student.state_dict())
    assert torch.equal(fresh.quantized_weight(), student.quantized_weight())


@pytest.mark.parametrize("kwargs, match", [
    (dict(group_size=0), "group_size = 0; expected a positive integer"),
    (dict(group_size=2.5), "group_size = 2.5"),
    (dict(weight="pow2", group_size=4), "weight = Pow2Weight takes no group_size; per-group scales come with"),
    (dict(weight="uniform_g4", group_size=8), "says group_size 4 but group_size = 8"),
])
def test_bad_group_arguments_name_the_argument(kwargs, match):
    with pytest.raises(QuantizerError, match=match):
        quantize_model(_linear(W), 4, None, **kwargs)


def test_group_codes_and_the_dequantization_check():
    student = quantize_model(nn.Sequential(_linear(W)), 2, None, group_size=4)
    codes = integer_codes(student)["0"]
    assert codes.tolist() == [[-2, -2, -1, 1, -2, 0, 0, 1], [-2, -1, 0, 1, -2, -2, -2, -2]]
    (row,) = check_dequantization(student)
    assert row["layer"] == "0" and row["group_size"] == 4 and row["n_clipped"] == 1  # the 7 of [1, 2, 4, 7]
    assert row["max_error_over_scale"] <= 0.5 + 1e-9
    assert forward_weights(student).keys() == {"0.weight"}
    assert torch.allclose(forward_weights(student)["0.weight"], HAND, atol=1e-8, rtol=0)


def test_a_group_suffix_resolves_like_the_argument():
    from landscape.quant.interface import resolve_quantizer

    lsq = resolve_quantizer("lsq_g4", "weight")(3)
    assert isinstance(lsq, LSQ) and lsq.group_size == 4
    assert resolve_quantizer("uniform_g8", "weight")(3).group_size == 8
    with pytest.raises(QuantizerError, match="weight = Pow2Weight takes no group_size"):
        resolve_quantizer("pow2_g4", "weight")
    with pytest.raises(QuantizerError, match="'uniform_g4' is not a built-in act quantizer"):
        resolve_quantizer("uniform_g4", "act")
    a = quantize_model(_linear(W), 3, None, weight="lsq_g4")
    b = quantize_model(_linear(W), 3, None, weight="lsq", group_size=4)
    assert torch.equal(a.quantized_weight(), b.quantized_weight()) and coverage_report(a).weight == "lsq_g4"
