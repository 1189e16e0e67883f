"""The quantizer interface (quantize_model's weight=/act=/include=/exclude=/a_bits=None, the
coverage report, recipes naming quantizers) and the built-in quantizers, each against a hand
computation of its forward and of its gradients as its paper defines them."""

from __future__ import annotations

import math
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from landscape.config import RecipeError, resolve_run, validate_recipe
from landscape.models import SmallCNN
from landscape.quant import (QuantizationWarning, QuantizerError, act_quantizers, calibrate, coverage_report, frozen_rounding, quantize_model,
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


# ----------------------------------------------------------------------------- the built-ins, by hand

def _grads(module, x, upstream, *params):
    x = x.clone().requires_grad_(True)
    y = module(x)
    grads = torch.autograd.grad((y * upstream).sum(), [x, *params])
    return y.detach(), grads


def test_lsq_weights_forward_gradients_and_paper_initialisation():
    from landscape.quant.quantizers import LSQ

    w = torch.tensor([-3.0, -1.3, -0.2, 0.4, 0.74, 2.6], dtype=torch.double)
    q = LSQ(3).double()  # Q_N = 4, Q_P = 3
    assert (q.q_n, q.q_p) == (4, 3)
    q(w)  # first call: s = 2 mean|w| / sqrt(Q_P)
    assert math.isclose(q.step.item(), 2 * (3.0 + 1.3 + 0.2 + 0.4 + 0.74 + 2.6) / 6 / math.sqrt(3), rel_tol=1e-12)
    with torch.no_grad():
        q.step.fill_(0.5)  # v/s = -6 (clip), -2.6, -0.4, 0.8, 1.48, 5.2 (clip)
    a = torch.tensor([0.3, -1.1, 0.7, 2.0, -0.4, 1.3], dtype=torch.double)
    y, (gw, gs) = _grads(q, w, a, q.step)
    assert torch.equal(y, torch.tensor([-2.0, -1.5, 0.0, 0.5, 0.5, 1.5], dtype=torch.double))
    assert torch.allclose(gw, a * torch.tensor([0, 1, 1, 1, 1, 0], dtype=torch.double), atol=1e-14, rtol=0)
    d = [-4, -(-2.6) + -3, 0.4 + 0, -0.8 + 1, -1.48 + 1, 3]  # -Q_N; -v/s + round(v/s); Q_P
    g = 1 / math.sqrt(6 * 3)
    assert math.isclose(gs.item(), g * sum(ai * di for ai, di in zip(a.tolist(), d)), rel_tol=1e-12)


def test_lsq_activations_unsigned_with_features_per_sample():
    from landscape.quant.quantizers import LSQAct

    q = LSQAct(2).double()  # Q_N = 0, Q_P = 3
    x = torch.tensor([[0.0, 0.5, 1.1], [2.9, 0.3, 0.05]], dtype=torch.double)
    q(x)
    assert math.isclose(q.step.item(), 2 * x.abs().mean().item() / math.sqrt(3), rel_tol=1e-12)
    with torch.no_grad():
        q.step.fill_(0.4)  # x/s = 0, 1.25, 2.75, 7.25 (clipped to Q_P), 0.75, 0.125
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.double)
    y, (gx, gs) = _grads(q, x, a, q.step)
    assert torch.allclose(y, torch.tensor([[0.0, 0.4, 1.2], [1.2, 0.4, 0.0]], dtype=torch.double), atol=1e-15)
    # (x/s)·s is 1 up to an ulp through the gradient scale's detach trick
    assert torch.allclose(gx, a * torch.tensor([[1, 1, 1], [0, 1, 1]], dtype=torch.double), atol=1e-14, rtol=0)
    d = [0 + 0, -1.25 + 1, -2.75 + 3, 3, -0.75 + 1, -0.125 + 0]
    g = 1 / math.sqrt(3 * 3)  # N_F = 3 features per sample
    assert math.isclose(gs.item(), g * sum(ai * di for ai, di in zip(a.flatten().tolist(), d)), rel_tol=1e-12)


def test_pact_forward_and_gradients_as_the_paper_defines_them():
    from landscape.quant.quantizers import PACT

    assert PACT(2, alpha=10.0).alpha.item() == 10.0  # the paper's initial value
    q = PACT(2).double()
    q(torch.tensor([0.2, 3.5, 1.0], dtype=torch.double))
    assert q.alpha.item() == 3.5  # by default: the first batch's largest value
    with torch.no_grad():
        q.alpha.fill_(1.5)  # 2 bits: levels 0, 0.5, 1, 1.5
    x = torch.tensor([0.0, 0.3, 0.8, 1.4, 1.5, 2.7], dtype=torch.double)
    a = torch.tensor([0.5, -1.0, 2.0, 3.0, -0.25, 0.75], dtype=torch.double)
    y, (gx, ga) = _grads(q, x, a, q.alpha)
    assert torch.equal(y, torch.tensor([0.0, 0.5, 1.0, 1.5, 1.5, 1.5], dtype=torch.double))
    assert torch.equal(gx, a * torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.double))  # 1 on [0, α)
    assert ga.item() == -0.25 + 0.75  # ∂y_q/∂α = 1 where x ≥ α


def test_dorefa_weights_forward_and_gradient_through_tanh_and_max():
    from landscape.quant.quantizers import DoReFaWeight

    w = torch.tensor([-1.2, -0.3, 0.05, 0.6, 0.9], dtype=torch.double)
    a = torch.tensor([0.4, -1.0, 2.0, 0.3, -0.7], dtype=torch.double)
    y, (gw,) = _grads(DoReFaWeight(2), w, a)
    t = [math.tanh(v) for v in w.tolist()]
    M, j = max(abs(v) for v in t), 0  # the arg max |tanh(w)| is w_0 = -1.2
    r = [v / (2 * M) + 0.5 for v in t]
    assert torch.allclose(y, torch.tensor([2 * round(3 * ri) / 3 - 1 for ri in r], dtype=torch.double), atol=1e-15)
    dM = [0.0] * 5
    dM[j] = math.copysign(1, t[j]) * (1 - t[j] ** 2)
    # ∂w_q/∂w = 2 ∂r/∂w (STE on quantize_k); ∂r_i/∂w_k = δ_ik (1-t_i²)/(2M) - t_i/(2M²) ∂M/∂w_k
    hand = [sum(a[i].item() * 2 * ((1 - t[i] ** 2) / (2 * M) * (i == k) - t[i] / (2 * M ** 2) * dM[k])
                for i in range(5)) for k in range(5)]
    assert torch.allclose(gw, torch.tensor(hand, dtype=torch.double), atol=1e-14, rtol=0)
    assert set(torch.round(y * 3).tolist()) <= {-3.0, -1.0, 1.0, 3.0}  # levels 2i/3 - 1


def test_pow2_weights_nearest_power_of_two_per_channel_identity_ste():
    from landscape.quant.quantizers import Pow2Weight

    w = torch.tensor([[1.0, -0.7, 0.3, 0.1, -0.12, 0.13],
                      [-4.0, 3.1, 1.4, 0.2, 0.0, -2.9]], dtype=torch.double)
    a = torch.randn(2, 6, dtype=torch.double)
    y, (gw,) = _grads(Pow2Weight(3), w, a)  # 3 bits: magnitudes m·{1, 1/2, 1/4} and 0
    assert torch.equal(y, torch.tensor([[1.0, -0.5, 0.25, 0.0, 0.0, 0.25],
                                        [-4.0, 4.0, 1.0, 0.0, 0.0, -2.0]], dtype=torch.double))
    assert torch.equal(gw, a)
    # against an enumeration of the levels, on random weights at 2..5 bits
    torch.manual_seed(3)
    v = torch.randn(4, 50, dtype=torch.double)
    for bits in (2, 3, 4, 5):
        m = v.abs().amax(dim=1, keepdim=True)
        levels = torch.cat([torch.zeros(1, dtype=torch.double), 2.0 ** -torch.arange(2 ** (bits - 1) - 1.0)])
        cand = torch.cat([-levels.flip(0)[:-1], levels]).reshape(1, 1, -1) * m.unsqueeze(-1)
        ref = torch.gather(cand.expand(4, 50, -1), 2, (v.unsqueeze(-1) - cand).abs().argmin(-1, keepdim=True))[..., 0]
        assert torch.allclose(Pow2Weight(bits)(v), ref, atol=1e-15, rtol=0), bits


def test_torch_ao_adapter_weights_and_activations():
    from landscape.quant.quantizers import TorchAOAct, TorchAOWeight

    w = torch.tensor([[0.2, 0.9, 0.5, 0.31], [-1.0, 0.4, -0.6, 0.1]], dtype=torch.double)
    q = TorchAOWeight(3).double()
    a = torch.randn(2, 4, dtype=torch.double)
    y, (gw,) = _grads(q, w, a)
    lo, hi = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)  # torch.ao keeps 0 in range
    s = ((hi - lo) / 7).float().double()
    z = (-4 - torch.round(lo / s)).clamp(-4, 3)
    # torch.ao computes the fake-quantized value in float32 whatever the input dtype
    assert torch.allclose(y, (torch.clamp(torch.round(w / s) + z, -4, 3) - z) * s, atol=3e-7, rtol=0)
    assert torch.equal(gw, a)  # nothing clamped: the identity
    q(w * 2)  # the observer is reset at every call: the grid follows the weight
    assert torch.allclose(q.fq.scale.double(), 2 * s.flatten(), rtol=1e-6)

    act = TorchAOAct(2).double()
    x = torch.tensor([0.0, 0.7, 1.5, 3.0], dtype=torch.double)
    assert torch.equal(act(x), x)  # not calibrated yet: passes through
    with torch.no_grad():
        act.calibrating = True
        act(torch.tensor([0.0, 1.5], dtype=torch.double))  # first observation: range [0, 1.5]
        act.calibrating = False
    y, (gx,) = _grads(act, x, torch.ones(4, dtype=torch.double))
    assert torch.allclose(y, torch.tensor([0.0, 0.5, 1.5, 1.5], dtype=torch.double), atol=1e-7)
    assert torch.equal(gx, torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.double))  # clamped code: 0


def test_uniform_weight_class_is_the_default_grid():
    from landscape.quant.quantizers import UniformWeight

    w = torch.randn(5, 7, dtype=torch.double)
    for zp in ("integral", "float"):
        assert torch.equal(UniformWeight(3, zp)(w), Q.fake_quant_weight(w, 3, zp))
    by_class = quantize_model(_net(), 4, 4, weight=UniformWeight)  # the built-in class: the same path
    assert all(m.weight_quantizer is None for _, m in quantized_layers(by_class))


# ----------------------------------------------------------------------------- frozen rounding, curvature, training

WEIGHTS = ["uniform", "lsq", "dorefa", "pow2", "torch_ao"]
ACTS = ["uniform", "lsq", "pact", "torch_ao"]


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def _hand_forward(x, w0, b0, w1, b1, c_act):
    """The MLP by hand: linear, ReLU, + the activation offset c_act, linear."""
    return (torch.relu(x @ w0.T + b0) + c_act) @ w1.T + b1


@pytest.mark.parametrize("weight, act", list(zip(WEIGHTS, ACTS + ["pact"])) + [("lsq", "lsq")])
def test_frozen_rounding_holds_every_builtin_offset_at_theta(weight, act):
    torch.manual_seed(0)
    x = torch.randn(7, 6, dtype=torch.double)
    student = calibrate(quantize_model(_mlp(), 3, 3, weight=weight, act=act), [x])
    (_, l0), (_, l1) = quantized_layers(student)
    (_, aq), = act_quantizers(student)
    with torch.no_grad():
        qw0, qw1 = l0.quantized_weight().clone(), l1.quantized_weight().clone()
        h = torch.relu(x @ qw0.T + l0.bias)
        c_act = aq(h) - h  # the activation offset at θ
        plain = student(x)
    assert torch.allclose(plain, _hand_forward(x, qw0, l0.bias, qw1, l1.bias, c_act), atol=1e-12)
    d0, d1 = 0.05 * torch.randn_like(l0.weight), 0.05 * torch.randn_like(l1.weight)
    c0, c1 = qw0 - l0.weight.detach(), qw1 - l1.weight.detach()
    with frozen_rounding(student, [x]), torch.no_grad():
        assert torch.allclose(student(x), plain, atol=1e-12)  # F(θ) = L(θ)
        l0.weight += d0
        l1.weight += d1
        moved = student(x)  # F(θ + d): the float net at w + d + c(θ), activation offsets of θ
        h = torch.relu(x @ (l0.weight + c0).T + l0.bias)
        assert torch.allclose(moved, (h + c_act) @ (l1.weight + c1).T + l1.bias, atol=1e-12)
        l0.weight -= d0
        l1.weight -= d1
    assert all("forward" not in m.__dict__ for m in student.modules())


class RoundTo(nn.Module):
    """A quantizer of the interface written in the test: x rounded to multiples of 2^-bits, no offset()."""

    def __init__(self, bits):
        super().__init__()
        self.unit = 2.0 ** -bits

    def forward(self, x):
        return x + (torch.round(x / self.unit) * self.unit - x).detach()


def test_frozen_rounding_for_a_quantizer_class_written_here_by_hand():
    torch.manual_seed(1)
    x = torch.randn(4, 6, dtype=torch.double)
    model = _mlp(1)
    student = quantize_model(model, 2, 2, weight=RoundTo, act=RoundTo)  # unit 1/4
    r = lambda t: torch.round(t * 4) / 4  # noqa: E731
    w0, b0, w1, b1 = (p.detach().clone() for p in model.parameters())
    h = torch.relu(x @ r(w0).T + b0)
    c_act = r(h) - h
    with torch.no_grad():
        assert torch.allclose(student(x), _hand_forward(x, r(w0), b0, r(w1), b1, c_act), atol=1e-12)
    d = torch.full_like(w0, 0.3)
    with frozen_rounding(student, [x]), torch.no_grad():
        student[0].weight += d
        # by hand: weight offset r(w0) - w0 and activation offsets held at θ
        assert torch.allclose(student(x), _hand_forward(x, w0 + d + (r(w0) - w0), b0, r(w1), b1, c_act),
                              atol=1e-12)
        student[0].weight -= d
    with torch.no_grad():
        student[0].weight += d  # outside the block: re-quantized
        assert torch.allclose(student(x), _hand_forward(x, r(w0 + d), b0, r(w1), b1,
                                                        r(torch.relu(x @ r(w0 + d).T + b0))
                                                        - torch.relu(x @ r(w0 + d).T + b0)), atol=1e-12)


def test_lsq_hessian_is_the_exact_one_over_the_weights_only():
    from torch.func import functional_call, hessian

    from landscape.curvature import Hessian
    from landscape.losses import cross_entropy

    torch.manual_seed(2)
    x, y = torch.randn(9, 6, dtype=torch.double), torch.randint(0, 3, (9,))
    student = calibrate(quantize_model(_mlp(2), 4, 4, weight="lsq", act="lsq"), [x])
    H = Hessian(student, cross_entropy(), [(x, y)])
    assert list(H.layers()) == ["0", "2"] and not any("step" in n for n in H.names)
    names, params = H.names, [p.detach() for p in (dict(student.named_parameters())[n] for n in H.names)]
    sizes = [p.numel() for p in params]
    others = {n: p.detach() for n, p in student.named_parameters() if n not in names}
    assert set(others) == {"0.wq.step", "2.wq.step", "1.quant.step"}

    def loss(flat):
        chunks = torch.split(flat, sizes)
        ps = {n: c.reshape(p.shape) for n, c, p in zip(names, chunks, params)}
        return torch.nn.functional.cross_entropy(functional_call(student, {**ps, **others}, (x,)), y)

    exact = hessian(loss)(torch.cat([p.flatten() for p in params]))
    dense = torch.stack([H @ e for e in torch.eye(H.shape[0], dtype=torch.double)], dim=1)
    assert torch.allclose(dense, exact, atol=1e-10, rtol=0)
    assert float(exact.abs().max()) > 1e-3  # a real matrix, not zeros


def test_quantizer_parameters_train_with_the_student_and_a_checkpoint_restores_them():
    from landscape.checkpoints import rebuild_student
    from landscape.zsq.gi import InundatedSGD, param_groups

    torch.manual_seed(3)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    student = calibrate(quantize_model(SmallCNN(1, 10, 4), 4, 4, weight="lsq", act="pact"), [x]).requires_grad_(True)
    groups = param_groups(student)
    assert [g["layer"] for g in groups] == [None]  # no grid layer: no GI groups, no crossings on a foreign grid
    aux = [n for n, p in student.named_parameters() if n.endswith((".step", ".alpha"))]
    assert "features.0.0.wq.step" in aux and "fc.wq.step" in aux and any(n.endswith("quant.alpha") for n in aux)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    opt = InundatedSGD(groups, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, rho=None,
                       kappa_max=2.0, bisect_steps=0, form="official")
    torch.nn.functional.cross_entropy(student(x * 5), y).backward()
    opt.step()
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert "features.0.0.wq.step" in changed and "fc.wq.step" in changed
    ckpt = {"quant": {"w_bits": 4, "a_bits": 4, "act_momentum": 0.9, "weight_zero_point": "integral",
                      "weight": "lsq", "act": "pact"},
            "model_spec": {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "width": 4},
            "student_state": student.state_dict()}
    rebuilt = rebuild_student(ckpt)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), student.eval()(x))


def test_a_recipe_naming_quantizers_trains_them_and_its_checkpoints_rebuild(tmp_path):
    import copy

    from landscape.checkpoints import list_checkpoints, load_checkpoint, rebuild_student
    from landscape.config import load_recipe
    from landscape.quant.quantizers import LSQ, PACT
    from tiny_runs import TINY, train_tiny

    recipe = copy.deepcopy(load_recipe(TINY))
    recipe["quant"].update(weight="lsq", act="pact")
    (run_dir,) = train_tiny(recipe, tmp_path, runs=["kd"], epochs=2)
    ckpt = load_checkpoint(list_checkpoints(run_dir)[-1][1])
    assert ckpt["quant"]["weight"] == "lsq" and ckpt["quant"]["act"] == "pact"
    student = rebuild_student(ckpt)
    assert all(isinstance(m.weight_quantizer, LSQ) for _, m in quantized_layers(student))
    assert all(isinstance(q, PACT) for _, q in act_quantizers(student))
    first = load_checkpoint(list_checkpoints(run_dir)[0][1])["student_state"]  # the warm-up epoch: not trained
    trained = [k for k, v in ckpt["student_state"].items() if k.endswith((".step", ".alpha"))
               and not torch.equal(v, first[k])]
    assert any(k.endswith(".wq.step") for k in trained)  # LSQ's steps were trained
