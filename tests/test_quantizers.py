"""The quantizer interface (quantize_model's weight=/act=/include=/exclude=/a_bits=None, the
coverage report, recipes naming quantizers) and the built-in quantizers, each against a hand
computation of its forward and of its gradients as its paper defines them."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from landscape.config import RecipeError, resolve_run, validate_recipe
from landscape.errors import LandscapeError
from landscape.models import SmallCNN
from landscape.quant import (ActQuant, QuantConv2d, QuantizationWarning, QuantizerError, QuantLinear,
                             act_quantizers, calibrate, coverage_report, frozen_rounding, quantize_model,
                             quantized_layers)
from landscape.quant import functional as Q


class Halver(nn.Module):
    """A quantizer written here: rounds x/2^(b-4)... to multiples of 0.5, with an identity STE."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, x):
        return x + (torch.round(2 * x) / 2 - x).detach()


class ScaledRound(nn.Module):
    """A learnable-scale quantizer written here (a parameter, no offset() method)."""

    def __init__(self, bits: int):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.25))

    def forward(self, x):
        return x + (torch.round(x / self.scale) * self.scale - x).detach()


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 8), nn.ReLU(),
                         nn.Linear(8, 4)).double()


# ----------------------------------------------------------------------------- the interface

def test_default_is_the_official_grid_bit_for_bit():
    model = _net()
    student = quantize_model(model, 4, 4)
    for name, m in quantized_layers(student):
        assert m.weight_quantizer is None and "wq" not in dict(m.named_children())
        w = dict(model.named_modules())[name].weight
        assert torch.equal(m.quantized_weight(), w + Q.weight_offset(w, 4, "integral"))
    assert set(student.state_dict()) == {"0.weight", "0.bias", "1.quant.lo", "1.quant.hi", "1.quant.initialized",
                                         "3.weight", "3.bias", "4.quant.lo", "4.quant.hi", "4.quant.initialized",
                                         "5.weight", "5.bias"}


def test_weights_only_and_include_exclude_keep_the_float_names():
    model = _net()
    student = quantize_model(model, 4, None)
    assert act_quantizers(student) == [] and isinstance(student[1], nn.ReLU)
    assert [n for n, _ in quantized_layers(student)] == ["0", "3", "5"]
    x = torch.randn(2, 1, 8, 8, dtype=torch.double)
    # by hand: the float forward at the quantized weights
    ref = model
    for n in ("0", "3", "5"):
        ref = ref  # names of the float model are the student's
    q = {n: m.quantized_weight().detach() for n, m in quantized_layers(student)}
    h = torch.relu(torch.nn.functional.conv2d(x, q["0"], model[0].bias)).flatten(1)
    h = torch.relu(h @ q["3"].T + model[3].bias)
    assert torch.allclose(student(x), h @ q["5"].T + model[5].bias, atol=1e-12, rtol=0)

    some = quantize_model(model, 4, None, include=["0", "5"])
    assert [n for n, _ in quantized_layers(some)] == ["0", "5"] and type(some[3]) is nn.Linear
    rest = quantize_model(model, 4, 4, exclude="[35]")  # fnmatch pattern
    assert [n for n, _ in quantized_layers(rest)] == ["0"]
    report = coverage_report(rest)
    assert report.covered == ["0.weight"]
    assert report.skipped == {"3.weight": "left in float by include=/exclude=",
                              "5.weight": "left in float by include=/exclude="}
    assert report.activations == ["1.quant", "4.quant"]
    with pytest.raises(QuantizerError, match="include pattern 'fc' matches no Conv2d/Linear layer"):
        quantize_model(model, 4, 4, include="fc")


def test_coverage_report_and_one_warning_for_unsupported_weights():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.conv = nn.Conv1d(4, 4, 1)
            self.norm = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, i):
            return self.fc(self.norm(self.conv(self.emb(i).transpose(1, 2)).mean(-1)))

    with pytest.warns(QuantizationWarning, match=r"2 weight tensor\(s\) left in float: emb.weight \(nn.Embedding "
                                                 r"is not quantized .*conv.weight \(nn.Conv1d"):
        student = quantize_model(Net(), 4, None)
    report = coverage_report(student)
    assert report.covered == ["fc.weight"]
    assert set(report.skipped) == {"emb.weight", "conv.weight", "norm.weight"}
    assert "norm.weight" not in report.unsupported()
    assert "1 weight tensor(s) quantized" in str(report)
    with pytest.raises(QuantizerError, match="not made by landscape.quant.quantize_model"):
        coverage_report(Net())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(_net(), 4, 4)  # nothing skipped: no warning


def test_a_user_class_for_weights_and_activations():
    model = _net()
    student = quantize_model(model, 4, 4, weight=Halver, act=Halver)
    assert all(isinstance(m.weight_quantizer, Halver) for _, m in quantized_layers(student))
    assert [type(m) for _, m in act_quantizers(student)] == [Halver, Halver]
    x = torch.randn(2, 1, 8, 8, dtype=torch.double)
    half = lambda t: torch.round(2 * t) / 2  # noqa: E731
    h = half(torch.relu(torch.nn.functional.conv2d(x, half(model[0].weight), model[0].bias))).flatten(1)
    h = half(torch.relu(h @ half(model[3].weight).T + model[3].bias))
    assert torch.allclose(student(x), h @ half(model[5].weight).T + model[5].bias, atol=1e-12, rtol=0)
    assert coverage_report(student).weight == "Halver"


@pytest.mark.parametrize("bad, match", [
    (dict(weight="pact"), "weight = 'pact' is not a built-in weight quantizer .'pact' quantizes activations only"),
    (dict(act="nope"), "act = 'nope' is not a built-in act quantizer"),
    (dict(weight="no_such_module_xyz:Q"), "cannot import no_such_module_xyz"),
    (dict(weight="landscape.quant:NoSuch"), "module landscape.quant has no 'NoSuch'"),
    (dict(weight=lambda bits: 3), "returned a int, not an nn.Module"),
    (dict(weight=lambda: nn.Identity()), "calling it as .*\\(4\\) failed"),
    (dict(weight=Halver, weight_zero_point="float"), "applies to the uniform weight quantizer only"),
    (dict(weight_zero_point="floor"), "weight_zero_point"),
])
def test_bad_quantizer_arguments_name_the_argument(bad, match):
    with pytest.raises(QuantizerError, match=match):
        quantize_model(_net(), 4, 4, **bad)


def test_recipes_name_quantizers_the_same_way(tmp_path, monkeypatch):
    (tmp_path / "myquant.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        class Q(nn.Module):
            def __init__(self, bits):
                super().__init__()
            def forward(self, x):
                return x + (torch.round(x) - x).detach()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    base = {"runs": {"kd": {"source": "real"}, "ptq": {"source": "none", "weight": "uniform"}}}
    default = validate_recipe(base, "r.toml")
    assert "weight" not in default["quant"] and "weight" not in resolve_run(default, "kd")  # hash unchanged
    recipe = validate_recipe({**base, "quant": {"weight": "myquant:Q", "act": "pact"}}, "r.toml")
    assert resolve_run(recipe, "kd")["weight"] == "myquant:Q" and resolve_run(recipe, "kd")["act"] == "pact"
    assert "weight" not in resolve_run(recipe, "ptq")  # the run's explicit uniform overrides [quant]
    student = quantize_model(_net(), 4, 4, weight=resolve_run(recipe, "kd")["weight"])
    assert type(quantized_layers(student)[0][1].weight_quantizer).__name__ == "Q"
    with pytest.raises(RecipeError, match=r"r.toml: \[quant\] weight = 'nomod_abc:Q': cannot import nomod_abc"):
        validate_recipe({**base, "quant": {"weight": "nomod_abc:Q"}}, "r.toml")
    with pytest.raises(RecipeError, match=r"\[runs.kd\] act = 'dorefa' is not a built-in act quantizer"):
        validate_recipe({"runs": {"kd": {"act": "dorefa"}}}, "r.toml")
    with pytest.raises(RecipeError, match="gi = true needs weight = 'uniform'"):
        validate_recipe({"runs": {"ait": {"gi": True, "weight": "myquant:Q"}}}, "r.toml")
    sys.modules.pop("myquant", None)


def test_quantizer_parameters_are_auxiliary_for_the_curvature_engine():
    from landscape.curvature import Hessian, resolve_params
    from landscape.losses import cross_entropy

    torch.manual_seed(1)
    model = _net()
    student = quantize_model(model, 4, None, weight=ScaledRound)
    names = [n for n, _ in student.named_parameters()]
    assert "0.wq.scale" in names
    chosen, _ = resolve_params(student, None)
    assert chosen == ["0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    assert resolve_params(student, "0")[0] == ["0.weight", "0.bias"]  # a layer: its weights
    assert resolve_params(student, "0.wq")[0] == ["0.wq.scale"]       # asked for: selected
    assert resolve_params(student, ["0.wq.scale"])[0] == ["0.wq.scale"]
    batches = [(torch.randn(4, 1, 8, 8, dtype=torch.double), torch.randint(0, 4, (4,)))]
    H = Hessian(student, cross_entropy(), batches)
    assert list(H.layers()) == ["0", "3", "5"]
    assert H.names == chosen
