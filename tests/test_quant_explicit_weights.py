"""The generated quantized classes (nn.MultiheadAttention, subclasses of nn.Linear / nn.Conv2d, GPT-2's Conv1D)
compute with explicit weights ŵ and never write ŵ into the module's ``_parameters`` (so threads calling one
student at once leave the float leaf in place); a forward landscape does not know keeps the swap under a
per-module lock; a student pickles and loads in a fresh process (review findings 2 and 3)."""

import copy
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import landscape
from landscape.quant import forward_weights, quantize_model
from landscape.quant.quantizers import UniformWeight


def _fq(w, bits=4):
    return UniformWeight(bits)(w.detach())


class _Recording(dict):
    """A ``_parameters`` dict that records every write."""

    def __init__(self, *a):
        super().__init__(*a)
        self.writes = []

    def __setitem__(self, k, v):
        self.writes.append(k)
        super().__setitem__(k, v)


class Doubled(nn.Linear):  # a forward of its own: the swap fallback
    def forward(self, x):
        return 2 * F.linear(x, self.weight, self.bias)


class Shifted(nn.Conv2d):  # nn.Conv2d's forward: explicit weights
    pass


def _quiet_quantize(model, bits=4):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(model, bits, None)


def _as_float_with(student_mha, float_mha):
    """``float_mha`` (torch's own class and forward) holding ŵ of the student as its float weights."""
    ref = copy.deepcopy(float_mha)
    with torch.no_grad():
        for name, w in forward_weights(student_mha).items():
            ref.get_parameter(name).copy_(w)
    return ref


@pytest.mark.parametrize("setting", [
    dict(batch_first=True),
    dict(kdim=6, vdim=5, batch_first=True),
    dict(add_bias_kv=True, add_zero_attn=True),
    dict(dropout=0.5, train=True),
])
def test_mha_computes_torchs_own_forward_on_the_quantized_weights_without_touching_its_parameters(setting):
    setting = dict(setting)
    train = setting.pop("train", False)
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, **setting).double().train(train)
    student = _quiet_quantize(copy.deepcopy(mha), 3).train(train)  # a student starts in eval mode
    reference = _as_float_with(student, mha)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(reference.parameters(), mha.parameters()))
    bf = setting.get("batch_first", False)
    shape = (2, 5) if bf else (5, 2)
    q = torch.randn(*shape, 8, dtype=torch.float64)
    k = torch.randn(*shape, setting.get("kdim", 8), dtype=torch.float64)
    v = torch.randn(*shape, setting.get("vdim", 8), dtype=torch.float64)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    calls = [((q, k, v), dict(key_padding_mask=pad, average_attn_weights=False)),
             ((q, k, v), dict(attn_mask=causal, is_causal=True)),
             ((q[0] if bf else q[:, 0], k[0] if bf else k[:, 0], v[0] if bf else v[:, 0]), {})]  # unbatched
    if "kdim" not in setting:
        calls.append(((q, q, q), dict(need_weights=False)))
    for module in (student, student.out_proj):
        module._parameters = _Recording(module._parameters)
    for args, kw in calls:
        torch.manual_seed(1)
        want = reference(*args, **kw)
        torch.manual_seed(1)
        got = student(*args, **kw)
        for a, b in zip(got, want):
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-12, rtol=0)
    assert student._parameters.writes == [] and student.out_proj._parameters.writes == []


def test_threads_calling_one_student_leave_every_float_leaf_in_place():
    torch.manual_seed(2)
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4, batch_first=True), "lin": Doubled(16, 4),
                           "conv": Shifted(2, 3, 3)})
    student = _quiet_quantize(model)
    leaves = {n: p for n, p in student.named_parameters()}
    x, img = torch.randn(2, 6, 16), torch.randn(1, 2, 5, 5)

    def outputs():
        return [student["attn"](x, x, x)[0], student["lin"](x), student["conv"](img)]

    want = outputs()
    assert torch.allclose(want[1], 2 * F.linear(x, _fq(model["lin"].weight), model["lin"].bias), atol=1e-6)
    assert torch.allclose(want[2], F.conv2d(img, _fq(model["conv"].weight), model["conv"].bias), atol=1e-6)
    wrong = []

    def run():
        for _ in range(60):
            got = outputs()
            if not all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(got, want)):
                wrong.append(got)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    after = dict(student.named_parameters())
    assert after.keys() == leaves.keys() and all(after[n] is p for n, p in leaves.items())
    assert all(isinstance(p, nn.Parameter) and p.is_leaf for p in after.values())


_LOAD = """
import sys, torch
student, x = torch.load(sys.argv[1], weights_only=False)
torch.save([type(student["attn"]).__name__, student["attn"](x, x, x), student["sep"](x, x[..., :4], x[..., :4]),
            student["lin"](x)],
           sys.argv[2])
"""


def test_a_quantized_attention_student_saves_and_loads_in_a_fresh_process(tmp_path):
    torch.manual_seed(3)
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2), "sep": nn.MultiheadAttention(8, 2, kdim=4, vdim=4),
                           "lin": nn.modules.linear.NonDynamicallyQuantizableLinear(8, 3)}).double()
    student = _quiet_quantize(model, 3)
    x = torch.randn(4, 2, 8, dtype=torch.float64)
    x4 = x[..., :4]
    want = [student["attn"](x, x, x), student["sep"](x, x4, x4), student["lin"](x)]
    clone = copy.deepcopy(student)
    assert torch.equal(clone["attn"](x, x, x)[0], want[0][0]) and type(clone["lin"]) is type(student["lin"])

    model_path, out_path = tmp_path / "student.pt", tmp_path / "out.pt"
    torch.save((student, x), model_path)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(landscape.__file__))}
    done = subprocess.run([sys.executable, "-c", _LOAD, str(model_path), str(out_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    name, attn, sep, lin = torch.load(out_path, weights_only=False)
    assert name == "QuantMultiheadAttention"
    for got, exp in ((attn, want[0]), (sep, want[1])):
        assert torch.equal(got[0], exp[0]) and torch.equal(got[1], exp[1])
    assert torch.equal(lin, want[2])
