"""Never stale, part 2: the model's own plain attributes and its train/eval modes.

A quantizer's bit width or grid, a BatchNorm's ``eps``, a replaced activation module and (with
``eval_mode=False``) a switch between ``train()`` and ``eval()`` change the products without
touching a tensor; each is checked exactly against a freshly built operator (float64). Counters
(``ActQuantPerCall.calls``, ``num_batches_tracked``) and, with ``eval_mode=True``, the modes
themselves must not cause rebuilds.
"""

import pytest
import torch
from torch import nn

from conftest import make_batches, make_model
from landscape.curvature import GGN, CurvatureError, Hessian
from landscape.curvature.state import StateTracker, module_values
from landscape.losses import cross_entropy
from landscape.quant import ActQuant, ActQuantPerCall, calibrate, quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b):
    return float((a - b).norm() / b.norm())


class TwoReLU(nn.Module):
    """conv, BatchNorm, a ReLU module called twice (one activation quantizer per call site), linear."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def quantized(seed: int = 0, batches=None):
    """A calibrated W4A4 student of TwoReLU (float64), in eval mode, as docs/own-model.md shows."""
    torch.manual_seed(seed)
    model = TwoReLU().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 2.0)
    student = quantize_model(model.eval(), w_bits=4, a_bits=4)
    calibrate(student, batches if batches is not None else make_batches([8, 8], seed=5))
    return student


def _conv_w_bits(m):
    m.conv.w_bits = 2


def _fc_w_bits(m):
    m.fc.w_bits = 3


def _act_bits(m):
    m.relu.quant[1].bits = 2


def _zero_point(m):
    m.conv2.zero_point = "float"


def _bn_eps(m):
    m.bn.eps = 0.5


def _calibrating(m):
    m.relu.quant[0].calibrating = True  # the forward pass re-fits the range (restored afterwards)


ATTRIBUTES = [_conv_w_bits, _fc_w_bits, _act_bits, _zero_point, _bn_eps, _calibrating]


def test_the_student_has_per_call_activation_quantizers():
    student = quantized()
    assert isinstance(student.relu.quant, ActQuantPerCall) and len(student.relu.quant) == 2
    assert all(bool(q.initialized) for q in student.relu.quant)


@pytest.mark.parametrize("op", [Hessian, GGN])
@pytest.mark.parametrize("mutate", ATTRIBUTES, ids=lambda f: f.__name__.strip("_"))
def test_a_changed_attribute_gives_the_fresh_answer(op, mutate):
    student = quantized()
    batches = make_batches([5, 3])
    A = op(student, cross_entropy(), batches)
    v = torch.randn(A.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = A @ v
    assert rel(A @ v, before) == 0.0 and A.n_rebuilds == 1
    mutate(student)
    fresh = op(student, cross_entropy(), batches) @ v
    assert rel(fresh, before) > 1e-3  # the change matters: the old graph would be clearly wrong
    assert rel(A @ v, fresh) < 1e-12
    assert A.n_rebuilds == 2


def test_the_change_is_named():
    student = quantized()
    tracker = StateTracker(student, cross_entropy(), modes=False)
    tracker.snapshot()
    assert tracker.changed() is None
    student.conv.w_bits = 2
    assert tracker.changed() == "model.conv.w_bits"
    student.conv.w_bits = 4  # back to the recorded value: nothing changed
    assert tracker.changed() is None
    student.bn.eps = 1e-3
    assert tracker.changed() == "model.bn.eps"


def test_dense_after_a_bit_width_change():
    student = quantized()
    batches = make_batches([6])
    H = Hessian(student, cross_entropy(), batches)
    D = H.dense()
    student.relu.quant[0].bits = 2
    fresh = Hessian(student, cross_entropy(), batches).dense()
    assert rel(fresh, D) > 1e-3
    assert rel(H.dense(), fresh) < 1e-12


def test_replaced_activation_module_is_followed():
    model = make_model(0)  # the activation has no parameters: only its class tells
    batches = make_batches([5, 3])
    H = Hessian(model, cross_entropy(), batches)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    before = H @ v
    model.act = nn.Sigmoid()
    fresh = Hessian(model, cross_entropy(), batches) @ v
    assert rel(fresh, before) > 1e-3
    assert rel(H @ v, fresh) < 1e-12


@pytest.mark.parametrize("op", [Hessian, GGN])
@pytest.mark.parametrize("start", ["eval", "train"])
def test_train_eval_switch_with_eval_mode_false(op, start):
    model = make_model(0)  # BatchNorm: batch statistics in train mode, running ones in eval mode
    getattr(model, start)()
    batches = make_batches([5, 3])
    A = op(model, cross_entropy(), batches, eval_mode=False)
    v = torch.randn(A.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = A @ v
    model.train(start == "eval")
    fresh = op(model, cross_entropy(), batches, eval_mode=False) @ v
    assert rel(fresh, before) > 1e-3
    assert rel(A @ v, fresh) < 1e-12
    assert A.n_rebuilds == 2
    model.train(start == "train")  # and back
    assert rel(A @ v, before) < 1e-12
    assert A.n_rebuilds == 3


def test_train_eval_switch_with_eval_mode_true_is_no_change():
    model = make_model(0)
    batches = make_batches([5, 3])
    H = Hessian(model, cross_entropy(), batches)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    before = H @ v
    model.train()
    assert rel(H @ v, before) == 0.0
    model.eval()
    assert rel(H @ v, before) == 0.0
    assert H.n_rebuilds == 1


def test_switching_dropout_on_with_eval_mode_false_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)).double().eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(5, 6, dtype=torch.float64, generator=g), torch.randint(0, 3, (5,), generator=g))]
    for cache in ("auto", False):
        model.eval()
        H = Hessian(model, cross_entropy(), batches, eval_mode=False, cache_graph=cache)
        H @ torch.zeros(H.shape[0], dtype=torch.float64)
        model.train()
        with pytest.raises(CurvatureError, match="active dropout"):
            H @ torch.zeros(H.shape[0], dtype=torch.float64)


@pytest.mark.parametrize("eval_mode", [True, False])
def test_products_alone_do_not_cause_rebuilds_on_a_quantized_model(eval_mode):
    student = quantized()
    if not eval_mode:
        student.train()  # batch statistics; num_batches_tracked and running statistics move per forward
    batches = make_batches([5, 2, 3])
    probe = Hessian(student, cross_entropy(), batches, eval_mode=eval_mode)
    probe @ torch.zeros(probe.shape[0], dtype=torch.float64)
    H = Hessian(student, cross_entropy(), batches, eval_mode=eval_mode, memory_budget=int(probe.cached_bytes * 0.6))
    v = torch.randn(H.shape[0], dtype=torch.float64)
    out = [H @ v for _ in range(4)]
    assert H.n_cached == 1 and not H.cache_complete  # partial cache: batches 2, 3 rebuilt per product
    assert H.n_rebuilds == 1  # the per-call counters, num_batches_tracked and the modes are not changes
    assert all(rel(o, out[0]) < 1e-13 for o in out)
    student.relu.quant.calls = 1  # a counter moved outside a forward pass (e.g. a block called alone)
    if eval_mode:  # and a forward pass of the user's, which restarts it (in train mode it would also move
        student(batches[0][0])  # BatchNorm's running statistics: a real change of the model's buffers)
    assert rel(H @ v, out[0]) < 1e-13
    assert H.n_rebuilds == 1
    student.relu.quant[1].bits = 3  # a real change is still seen
    assert rel(H @ v, out[0]) > 1e-3
    assert H.n_rebuilds == 2


def test_module_values():
    student = quantized()
    with_modes = module_values(student, modes=True)
    without = module_values(student, modes=False)
    flat = [e for e in with_modes if isinstance(e, tuple)]
    assert ("w_bits", 4) in flat and ("bits", 4) in flat and ("zero_point", "integral") in flat
    assert ("eps", 1e-5) in flat and ("stride", (1, 1)) in flat and ("calibrating", False) in flat
    assert ("training", False) in flat
    assert not any(isinstance(e, tuple) and e[0] == "training" for e in without)
    assert not any(isinstance(e, tuple) and e[0] in ("calls", "num_batches_tracked") for e in with_modes)
    assert [e for e in with_modes if isinstance(e, type)] == [type(m) for m in student.modules()]
    assert ActQuant in with_modes


class Counting(nn.Module):
    """A model that counts its forward passes in a plain attribute (no output depends on it)."""

    def __init__(self):
        super().__init__()
        self.net = make_model(0)
        self.n_forward = 0

    def forward(self, x):
        self.n_forward += 1
        return self.net(x)


def test_a_counter_the_forward_pass_moves_does_not_cause_rebuilds():
    model = Counting()
    batches = make_batches([5, 2, 3])
    probe = Hessian(model, cross_entropy(), batches)
    probe @ torch.zeros(probe.shape[0], dtype=torch.float64)
    H = Hessian(model, cross_entropy(), batches, memory_budget=int(probe.cached_bytes * 0.6))
    v = torch.randn(H.shape[0], dtype=torch.float64)
    out = [H @ v for _ in range(4)]
    assert not H.cache_complete and model.n_forward > 8  # the operator's own forward passes moved it
    assert H.n_rebuilds == 1  # re-recorded after them, never taken for a change
    assert all(rel(o, out[0]) < 1e-13 for o in out)
    model.net.bn.eps = 0.5  # while a change of the user's is seen
    assert rel(H @ v, out[0]) > 1e-3 and H.n_rebuilds == 2


class PrivateScale(nn.Module):
    """A module whose output depends on private state: it bumps its public ``version`` on every change
    (the protocol of landscape.curvature.state), which the check sees like any public setting."""

    def __init__(self):
        super().__init__()
        self.net = make_model(0)
        self._scale = 1.0
        self.version = 0

    def set_scale(self, scale: float) -> None:
        self._scale = scale
        self.version += 1

    def forward(self, x):
        return self.net(x) * self._scale


def test_private_state_is_followed_through_a_public_version_counter():
    model = PrivateScale()
    batches = make_batches([5, 3])
    H = Hessian(model, cross_entropy(), batches)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = H @ v
    model._scale = 2.0  # private and unannounced: not watched (documented), the cached graph answers
    assert rel(H @ v, before) == 0.0 and H.n_rebuilds == 1
    model.set_scale(2.0)  # the same value, announced: rebuilt, the fresh answer
    fresh = Hessian(model, cross_entropy(), batches) @ v
    assert rel(fresh, before) > 1e-3
    assert rel(H @ v, fresh) < 1e-12 and H.n_rebuilds == 2
