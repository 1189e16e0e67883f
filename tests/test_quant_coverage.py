"""quantize_model's coverage: one activation quantizer per call site of a ReLU module called
twice (torchvision's BasicBlock), a warning naming functional activations, a graceful fallback
when torch.fx cannot trace, and unchanged state-dict keys for our own models."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.losses import cross_entropy
from landscape.models import ResNet20, SmallCNN
from landscape.quant import (ActQuant, ActQuantPerCall, QuantizationError, QuantizationWarning, calibrate,
                             frozen_rounding, quantize_model)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one ReLU module, called twice."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 8, 2))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))  # functional: cannot be wrapped
        x = self.layer1(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def quantized_resnet():
    torch.manual_seed(0)
    with pytest.warns(QuantizationWarning) as record:
        student = quantize_model(TinyResNet().double(), 4, 4)
    return student, [str(w.message) for w in record]


def test_shared_relu_gets_one_quantizer_per_call_site_and_functional_relu_is_named():
    student, messages = quantized_resnet()
    assert len(messages) == 1
    assert "1 activation(s) cannot be quantized in place and stay in float" in messages[0]
    assert "F.relu in the model's forward (TinyResNet.forward, test_quant_coverage.py:" in messages[0]
    for block in student.layer1:
        sites = block.relu.quant
        assert isinstance(sites, ActQuantPerCall) and len(sites) == 2
        assert all("BasicBlock.forward, test_quant_coverage.py:" in s for s in sites.sites)
        assert sites.sites[0] != sites.sites[1]  # two source lines
    keys = set(student.state_dict())
    assert {"layer1.0.relu.quant.0.hi", "layer1.0.relu.quant.1.hi", "layer1.1.relu.quant.1.lo"} <= keys
    assert not any(k.startswith("layer1.0.relu.quant.hi") for k in keys)


def test_each_call_site_has_its_own_range():
    student, _ = quantized_resnet()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    block = student.layer1[1]
    seen = {}
    block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    calibrate(student, [x])  # one batch: each site's range is exactly its own batch min/max
    xb = seen["x"]
    with torch.no_grad():
        first = F.relu(block.bn1(block.conv1(xb)))
        q_first = block.relu.quant[0](first)
        second = F.relu(block.bn2(block.conv2(q_first)) + block.downsample(xb))
    assert block.relu.quant[0].hi.item() == pytest.approx(first.max().item(), rel=1e-12)
    assert block.relu.quant[1].hi.item() == pytest.approx(second.max().item(), rel=1e-12)
    assert abs(block.relu.quant[0].hi.item() - block.relu.quant[1].hi.item()) > 1e-3
    # the counter restarts with every forward and cycles for a block called on its own
    y = student(x)
    assert torch.equal(block(xb), block(xb))  # calls 1-2 then 3-4: sites 0, 1 each time
    block.relu.quant.calls = 1  # even a counter left mid-way (an error inside a forward) is reset
    assert torch.equal(student(x), y)
    # the model deep-copies with its counters' hooks pointing at the copy's own quantizers
    twin = copy.deepcopy(student)
    hook = next(iter(twin._forward_pre_hooks.values()))
    assert hook.per_call[-1][1] is twin.layer1[1].relu.quant
    assert torch.equal(twin(x), y)
    calibrate(twin, [3 * x])
    assert block.relu.quant[1].hi.item() == pytest.approx(second.max().item(), rel=1e-12)
    # frozen rounding replays each site's own offsets
    batch = [(x, torch.arange(4) % 5)]
    outside = cross_entropy()(student, batch[0]).item()
    with frozen_rounding(student, batch):
        assert cross_entropy()(student, batch[0]).item() == outside


def test_a_changed_call_count_is_an_error():
    student, _ = quantized_resnet()
    block = student.layer1[0]
    block.forward = lambda x: block.relu(block.relu(BasicBlock.forward(block, x)))
    with pytest.raises(QuantizationError, match=r"layer1.0.relu.quant: called 4 times .* found 2 call sites"):
        student(torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_untraceable_model_falls_back_with_a_warning():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.relu = nn.Linear(3, 3), nn.ReLU()

        def forward(self, x):
            return self.relu(self.fc(x)) if x.sum() > 0 else self.relu(-self.fc(x))

    with pytest.warns(QuantizationWarning, match="torch.fx cannot trace Branchy .* call sites of its 1 nn.ReLU/ReLU6 "
                                                 "module.s. were not checked: each gets one quantizer shared by all"):
        student = quantize_model(Branchy(), 4, 4)
    assert isinstance(student.relu.quant, ActQuant)


def test_one_relu_held_under_two_names_gets_one_quantizer_per_name():
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.relu = nn.Linear(3, 3), nn.ReLU()
            self.act = self.relu

        def forward(self, x):
            return self.act(self.fc(self.relu(x)))

    student = quantize_model(Aliased(), 4, 4)
    assert isinstance(student.relu.quant, ActQuant) and isinstance(student.act.quant, ActQuant)
    assert student.relu.quant is not student.act.quant
    calibrate(student, [torch.randn(5, 3)])
    assert student.relu.quant.initialized and student.act.quant.initialized


def test_relu6_modules_are_quantized_as_in_the_official_code():
    student = quantize_model(nn.Sequential(nn.Linear(3, 3), nn.ReLU6()), 4, 4)
    assert isinstance(student[1].quant, ActQuant)


@pytest.mark.parametrize("model", [SmallCNN(1, 10, 4), ResNet20(3, 10)], ids=["SmallCNN", "ResNet20"])
def test_our_models_keep_their_state_dict_keys_and_quantize_silently(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student = quantize_model(model, 4, 4)
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    expected = set(model.state_dict()) | {f"{n}.quant.{b}" for n in relus for b in ("lo", "hi", "initialized")}
    assert set(student.state_dict()) == expected
    assert not any(isinstance(m, ActQuantPerCall) for m in student.modules())
    assert not student._forward_pre_hooks and not student._forward_hooks
    spot = {"features.0.2.quant.hi"} if isinstance(model, SmallCNN) else {"stem.2.quant.lo",
                                                                           "layers.8.relu2.quant.initialized"}
    assert spot <= set(student.state_dict())
