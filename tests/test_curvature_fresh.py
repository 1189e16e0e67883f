"""Never stale: every product answers for the model as it is now, or refuses clearly.

Each mutation is checked exactly against a freshly built operator (float64), for the Hessian
and the GGN, including ``.dense()`` and ``eigenpairs`` after the change, and so is every change
of the loss (a teacher however the loss holds it, its temperature, reduction or other settings);
non-deterministic loaders (shuffling, noise, random flips), zero-sample batches, dropout with
``eval_mode=False`` and a once-differentiable STE get one clear error or warning.
"""

import argparse
import dataclasses
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_batches, make_model
from landscape.curvature import GGN, CurvatureError, CurvatureWarning, Hessian
from landscape.curvature.batches import _fingerprint, _same
from landscape.curvature.state import StateTracker
from landscape.losses import CrossEntropy, ce, cross_entropy, distillation, kl_divergence, kl_to_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _mul_data(m):
    m.fc.weight.data.mul_(1.5)


def _assign_data(m):
    m.conv.weight.data = m.conv.weight.data * 0.7 + 0.05


def _vector_to_parameters(m):
    v = torch.nn.utils.parameters_to_vector(m.parameters())
    torch.nn.utils.vector_to_parameters(v * 1.1, m.parameters())


def _load_state_dict(m):
    m.load_state_dict(make_model(7).state_dict())


def _bn_running_stats(m):
    m.bn.running_mean.data.add_(0.3)  # through .data: no version bump


def _optimizer_step(m):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)


def _replace_module(m):
    torch.manual_seed(3)
    m.fc = nn.Linear(12, 4).double()


def _load_assign(m):
    sd = {k: v.clone() * 1.2 if v.is_floating_point() else v for k, v in m.state_dict().items()}
    m.load_state_dict(sd, assign=True)


MUTATIONS = [_mul_data, _assign_data, _vector_to_parameters, _load_state_dict, _bn_running_stats,
             _optimizer_step, _replace_module, _load_assign]


@pytest.mark.parametrize("op", [Hessian, GGN])
@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__.strip("_"))
def test_every_mutation_gives_the_fresh_answer(op, mutate):
    model = make_model(0)
    batches = make_batches([5, 3])
    A = op(model, cross_entropy(), batches)
    v = torch.randn(A.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = A @ v
    mutate(model)
    fresh = op(model, cross_entropy(), batches) @ v
    assert rel(fresh, before) > 1e-3  # the mutation matters
    assert rel(A @ v, fresh) < 1e-12
    assert A.n_rebuilds == 2


def test_dense_and_eigenpairs_after_a_change(model):
    batches = make_batches([6])
    H = Hessian(model, cross_entropy(), batches)
    H.dense()
    top_before = H.eigenpairs(k=1, method="lanczos", tol=1e-10)
    model.fc.weight.data.mul_(2.0)
    fresh = Hessian(model, cross_entropy(), batches)
    assert rel(H.dense(), fresh.dense()) < 1e-12
    top = H.eigenpairs(k=1, method="lanczos", tol=1e-10)
    assert abs(float(top.values[0]) - float(torch.linalg.eigvalsh(fresh.dense())[-1])) < 1e-8
    assert abs(float(top.values[0]) - float(top_before.values[0])) > 1e-3


def test_views_follow_the_change_too(model):
    batches = make_batches([6])
    H = Hessian(model, cross_entropy(), batches)
    fc = H.restrict("fc")
    v = torch.randn(fc.shape[0], dtype=torch.float64)
    fc @ v
    model.fc.weight.data.mul_(1.7)
    assert rel(fc @ v, Hessian(model, cross_entropy(), batches, params="fc") @ v) < 1e-12


def test_teacher_change_is_seen(model, teacher):
    batches = make_batches([6])
    loss = kl_to_teacher(teacher, temperature=2.0)
    H = Hessian(model, loss, batches)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    H @ v
    teacher.fc.weight.data.mul_(3.0)
    assert rel(H @ v, Hessian(model, loss, batches) @ v) < 1e-12


# a teacher wherever a user's loss keeps it: KL(teacher(x) ‖ model(x)) at temperature 2
def _kd(model, batch, teacher, temperature=2.0):
    x = batch[0]
    with torch.no_grad():
        t = teacher(x)
    return kl_divergence(model(x), t, temperature)


_GLOBAL_TEACHER = None


def _kd_global(model, batch):
    return _kd(model, batch, _GLOBAL_TEACHER)


class _Distiller:
    def __init__(self, teacher):
        self.nets = {"teacher": [teacher]}  # nested in containers

    def loss(self, model, batch):
        return _kd(model, batch, self.nets["teacher"][0])


def _closure(teacher):
    return lambda model, batch: _kd(model, batch, teacher)


def _default_arg(teacher):
    return lambda model, batch, t=teacher: _kd(model, batch, t)


def _partial(teacher):
    return functools.partial(_kd, teacher=teacher)


def _bound_method(teacher):
    return _Distiller(teacher).loss


def _partial_of_method(teacher):
    return functools.partial(_Distiller(teacher).loss)


def _module_global(teacher):
    global _GLOBAL_TEACHER
    _GLOBAL_TEACHER = teacher
    return _kd_global


class _KDModule(nn.Module):
    def __init__(self, teacher, temperature=2.0):
        super().__init__()
        self.teacher = teacher
        self.temperature = temperature

    def forward(self, model, batch):
        return _kd(model, batch, self.teacher, self.temperature)


LOSS_FORMS = [_closure, _default_arg, _partial, _bound_method, _partial_of_method, _module_global, _KDModule]


@pytest.mark.parametrize("form", LOSS_FORMS, ids=lambda f: f.__name__.strip("_"))
def test_teacher_reachable_from_the_loss_is_watched(model, teacher, form):
    batches = make_batches([5, 3])
    loss = form(teacher)
    H = Hessian(model, loss, batches)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = H @ v
    assert rel(H @ v, before) == 0 and H.n_rebuilds == 1  # nothing changed: no rebuild
    teacher.fc.weight.data.mul_(3.0)  # in place, through .data
    fresh = Hessian(model, loss, batches) @ v
    assert rel(fresh, before) > 1e-3  # the change matters
    assert rel(H @ v, fresh) < 1e-12
    assert H.n_rebuilds == 2
    teacher.train()  # the engine puts only the model in eval mode: the teacher's mode is the loss's
    fresh = Hessian(model, loss, batches) @ v
    assert rel(H @ v, fresh) < 1e-12 and H.n_rebuilds == 3


# a loss's plain settings: every change gives the fresh answer
@dataclasses.dataclass(eq=False)  # a loss module stays hashable (see landscape.losses)
class _WeightedCE(CrossEntropy):
    weight: float = 1.0

    def on_outputs(self, outputs, batch):
        return self.weight * ce(outputs, batch[1])

    def output_hessian(self, outputs, batch):
        M = super().output_hessian(outputs, batch)
        M.scale *= self.weight
        return M


def _temperature(teacher):
    loss = kl_to_teacher(teacher, temperature=2.0)
    return loss, lambda: setattr(loss, "temperature", 4.0)


def _reduction(teacher):
    loss = kl_to_teacher(teacher, temperature=2.0)
    return loss, lambda: setattr(loss, "reduction", "mean")


def _kd_scale(teacher):
    loss = distillation(teacher, temperature=3.0, kd_scale=1.0)
    return loss, lambda: setattr(loss, "kd_scale", 2.5)


def _dataclass_field(teacher):
    loss = _WeightedCE(weight=1.0)
    return loss, lambda: setattr(loss, "weight", 0.3)


@dataclasses.dataclass
class _PlainWeightedCE:  # a loss object that is no module: its fields are found by the loss walk
    weight: float = 1.0

    def __call__(self, model, batch):
        return self.weight * ce(model(batch[0]), batch[1])


def _plain_dataclass_field(teacher):
    loss = _PlainWeightedCE(weight=1.0)
    return loss, lambda: setattr(loss, "weight", 0.3)


def _other_teacher(teacher):
    loss = kl_to_teacher(teacher, temperature=2.0)
    return loss, lambda: setattr(loss, "teacher", make_model(5))


def _partial_keyword(teacher):
    loss = functools.partial(_kd, teacher=teacher, temperature=2.0)
    return loss, lambda: loss.keywords.update(temperature=4.0)


def _closure_value(teacher):
    T = 2.0

    def loss(model, batch):
        return _kd(model, batch, teacher, T)

    def change():
        nonlocal T
        T = 4.0

    return loss, change


def _module_attribute(teacher):
    loss = _KDModule(teacher)
    return loss, lambda: setattr(loss, "temperature", 4.0)


def _criterion_setting(teacher):
    crit = nn.CrossEntropyLoss()
    return (lambda model, batch: crit(model(batch[0]), batch[1])), lambda: setattr(crit, "label_smoothing", 0.2)


def _class_weights_tensor(teacher):
    w = torch.ones(4, dtype=torch.float64)
    scale = torch.tensor([3.0, 1.0, 0.5, 1.0], dtype=torch.float64)
    return (lambda model, batch: F.cross_entropy(model(batch[0]), batch[1], weight=w)), lambda: w.data.mul_(scale)


class _TensorWeightedCE(nn.Module):  # class weights kept as a plain tensor attribute, not a buffer
    def __init__(self):
        super().__init__()
        self.w = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)

    def forward(self, model, batch):
        return F.cross_entropy(model(batch[0]) * self.w, batch[1])


def _loss_module_tensor_in_place(teacher):
    loss = _TensorWeightedCE()
    return loss, lambda: loss.w.mul_(3.0)


def _loss_module_tensor_reassigned(teacher):
    loss = _TensorWeightedCE()
    return loss, lambda: setattr(loss, "w", torch.tensor([0.5, 2.0, 3.0, 0.2], dtype=torch.float64))


class _Teachers(nn.Module):  # teachers kept in a list attribute: reached only by walking the loss module
    def __init__(self, teachers):
        super().__init__()
        self.teachers = list(teachers)

    def forward(self, model, batch):
        return sum(_kd(model, batch, t, 2.0) for t in self.teachers)


def _loss_module_list_of_teachers(teacher):
    loss = _Teachers([teacher])
    return loss, lambda: teacher.fc.weight.data.mul_(3.0)


def _closure_over_a_foreign_object(teacher):
    cfg = argparse.Namespace(temperature=1.0)  # an object whose class is defined in another package

    def loss(model, batch):
        return ce(model(batch[0]) / cfg.temperature, batch[1])

    return loss, lambda: setattr(cfg, "temperature", 4.0)


class _SlottedWeightedCE:  # a loss object with __slots__ (no __dict__): its slots are its attributes
    __slots__ = ("weight",)

    def __init__(self, weight):
        self.weight = weight

    def __call__(self, model, batch):
        return self.weight * ce(model(batch[0]), batch[1])


def _slotted_field(teacher):
    loss = _SlottedWeightedCE(1.0)
    return loss, lambda: setattr(loss, "weight", 0.3)


SPLIT = [_temperature, _reduction, _kd_scale, _dataclass_field]  # split at the outputs: the GGN's too
SETTINGS = SPLIT + [_plain_dataclass_field, _other_teacher, _partial_keyword, _closure_value, _module_attribute, _criterion_setting,
                    _class_weights_tensor, _loss_module_tensor_in_place, _loss_module_tensor_reassigned,
                    _loss_module_list_of_teachers, _closure_over_a_foreign_object, _slotted_field]


@pytest.mark.parametrize(("op", "setting"), [(Hessian, f) for f in SETTINGS] + [(GGN, f) for f in SPLIT],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_change_of_the_loss_gives_the_fresh_answer(model, teacher, op, setting):
    batches = make_batches([5, 3])
    loss, change = setting(teacher)
    A = op(model, loss, batches)
    v = torch.randn(A.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = A @ v
    assert rel(A @ v, before) == 0 and A.n_rebuilds == 1
    change()
    fresh = op(model, loss, batches) @ v
    assert rel(fresh, before) > 1e-3  # the change matters
    assert rel(A @ v, fresh) < 1e-12
    assert A.n_rebuilds == 2


def test_same_value_in_place_write_does_not_break_the_cached_graph(model):
    H = Hessian(model, cross_entropy(), make_batches([6]))
    v = torch.randn(H.shape[0], dtype=torch.float64)
    Hv = H @ v
    with torch.no_grad():
        model.conv.weight.mul_(1.0)  # bumps the version counter, same values
    assert rel(H @ v, Hv) < 1e-14  # rebuilt instead of autograd's "modified by an inplace operation"


def test_counters_and_train_mode_statistics_do_not_cause_rebuilds(model, teacher):
    model.train()
    batches = make_batches([5, 2, 3])
    loss = kl_to_teacher(teacher, temperature=2.0)
    probe = Hessian(model, loss, batches, eval_mode=False)
    probe @ torch.zeros(probe.shape[0], dtype=torch.float64)
    H = Hessian(model, loss, batches, eval_mode=False, memory_budget=int(probe.cached_bytes * 0.6))
    v = torch.randn(H.shape[0], dtype=torch.float64)
    out = [H @ v for _ in range(4)]
    assert H.n_cached == 1 and not H.cache_complete  # partial cache: batches 2, 3 rebuilt per product
    assert H.n_rebuilds == 1  # not 4: num_batches_tracked and running statistics are not "changes"
    assert all(rel(o, out[0]) < 1e-13 for o in out)


def test_model_to_float32_is_followed():
    model = make_model(0)
    batches = make_batches([6])
    H = Hessian(model, cross_entropy(), batches)
    H @ torch.zeros(H.shape[0], dtype=torch.float64)
    model.float()
    assert H.dtype == torch.float32
    with pytest.raises(CurvatureError, match="dtype torch.float32"):
        H @ torch.zeros(H.shape[0], dtype=torch.float64)
    fb = [(x.float(), y) for x, y in batches]
    H32 = Hessian(model, cross_entropy(), fb)
    v = torch.randn(H.shape[0])
    assert rel(Hessian(model, cross_entropy(), fb) @ v, H32 @ v) < 1e-6


def test_deleted_parameter_is_a_clear_error(model):
    H = Hessian(model, cross_entropy(), make_batches([4]))
    H @ torch.zeros(H.shape[0], dtype=torch.float64)
    model.fc = nn.Linear(12, 5).double()  # another shape
    with pytest.raises(CurvatureError, match="'fc.weight' changed shape"):
        H @ torch.zeros(H.shape[0], dtype=torch.float64)


# ------------------------------------------------------------------ batches
def _loader(shuffle, seed=0, augment=False, flip=False):
    b = make_batches([4, 4, 4])
    x = torch.cat([t[0] for t in b])
    y = torch.cat([t[1] for t in b])
    coin = torch.Generator().manual_seed(seed + 1)

    class Aug(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            noise = torch.randn(x[i].shape, dtype=x.dtype) * 0.1 if augment else 0.0
            xi = x[i]
            if flip and bool(torch.rand((), generator=coin) < 0.5):  # random horizontal flip
                xi = xi.flip(-1)
            return xi + noise, y[i]

    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(Aug(), batch_size=4, shuffle=shuffle, generator=g)


def test_random_flips_change_the_products_and_the_fingerprint(model):
    """A flip keeps every sum of the batch (Σx, Σx²) but not the products: the fingerprint must see it."""
    x, y = make_batches([4])[0]
    xf = x.clone()
    xf[1] = xf[1].flip(-1)
    assert torch.allclose(xf.sum(), x.sum()) and torch.allclose((xf * xf).sum(), (x * x).sum())
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    Hv, Hfv = (Hessian(model, cross_entropy(), [(a, y)]) @ v for a in (x, xf))
    assert rel(Hfv, Hv) > 1e-2
    fp = _fingerprint((x, y))
    assert _same(fp, _fingerprint((x.clone(), y.clone())))
    assert not _same(fp, _fingerprint((xf, y)))  # a value moved within a sample
    assert not _same(fp, _fingerprint((x, y.flip(0))))  # labels re-paired with other inputs
    assert _same(fp, _fingerprint((x.flip(0), y.flip(0))))  # same samples in another order: same mean loss
    assert not _same(fp, _fingerprint((x[:, [1, 0]], y)))  # channels swapped
    assert not _same(fp, _fingerprint((x.float(), y)))  # another dtype


@pytest.mark.parametrize("cache", ["partial", False, "rebuild"])
@pytest.mark.parametrize("kind", ["shuffle", "augment", "flip"])
def test_nondeterministic_loader_is_refused(model, cache, kind):
    loader = _loader(shuffle=kind == "shuffle", augment=kind == "augment", flip=kind == "flip")
    if cache == "partial":
        probe = Hessian(model, cross_entropy(), make_batches([4, 4, 4]))
        probe @ torch.zeros(probe.shape[0], dtype=torch.float64)
        H = Hessian(model, cross_entropy(), loader, memory_budget=int(probe.cached_bytes * 0.4))
    else:
        H = Hessian(model, cross_entropy(), loader, cache_graph=cache if cache is False else True)
    z = torch.zeros(H.shape[0], dtype=torch.float64)
    if cache == "rebuild":  # a full cache needs no second pass -- until the model changes
        H @ z
        H @ z
        model.fc.weight.data.mul_(1.1)
    with pytest.raises(CurvatureError, match="batches changed between two passes.*list\\(loader\\)"):
        for _ in range(3):  # a partial cache sees the second pass within the first product
            H @ z


def test_deterministic_loader_passes_and_matches_the_list(model):
    batches = make_batches([4, 4, 4])
    probe = Hessian(model, cross_entropy(), batches)
    v = torch.randn(probe.shape[0], dtype=torch.float64)
    ref = probe @ v
    H = Hessian(model, cross_entropy(), _loader(shuffle=False), memory_budget=int(probe.cached_bytes * 0.4))
    for _ in range(3):
        assert rel(H @ v, ref) < 1e-12


def test_zero_sample_batch_is_a_clear_error(model):
    x, y = make_batches([4])[0]
    for batches in ([(x[:0], y[:0]), (x, y)], [(x, y), (x[:0], y[:0])]):
        H = Hessian(model, cross_entropy(), batches)
        with pytest.raises(CurvatureError, match="batch \\d has zero samples"):
            H @ torch.zeros(H.shape[0], dtype=torch.float64)


# ------------------------------------------------------------------ random or incomputable curvature
def test_dropout_with_eval_mode_false_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).double().train()
    batches = [(torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))]
    with pytest.raises(CurvatureError, match="eval_mode=False with active dropout in \\['1'\\]"):
        Hessian(model, cross_entropy(), batches, eval_mode=False)
    with pytest.raises(CurvatureError, match="dropout"):
        GGN(model, cross_entropy(), batches, eval_mode=False)
    Hessian(model, cross_entropy(), batches)  # eval mode: fine
    model[1].eval()
    Hessian(model, cross_entropy(), batches, eval_mode=False)  # dropout off: fine


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        return torch.round(w * 4) / 4

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return g


class _DetachSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        return torch.round(w * 4) / 4

    @staticmethod
    def backward(ctx, g):
        return g.detach().clone()


class _QNet(nn.Module):
    def __init__(self, ste):
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(4, 6)
        self.q = nn.Linear(6, 3)
        self.ste = ste

    def forward(self, x):
        return nn.functional.linear(torch.tanh(self.l1(x)), self.ste.apply(self.q.weight), self.q.bias)


@pytest.mark.parametrize("ste", [_RoundSTE, _DetachSTE], ids=["once_differentiable", "detaching"])
@pytest.mark.parametrize("op", [Hessian, GGN])
def test_incomputable_curvature_warns_naming_the_layer(ste, op):
    model = _QNet(ste).double()
    batches = [(torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
                torch.tensor([0, 1, 2, 0, 1, 2, 0]))]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        A = op(model, cross_entropy(), batches)
        D = A.dense()
        A @ torch.ones(A.shape[0], dtype=torch.float64)
    msgs = [str(w.message) for w in rec if issubclass(w.category, CurvatureWarning)]
    assert len(msgs) == 1 and "['q']" in msgs[0] and "q.weight" in msgs[0] and "once_differentiable" in msgs[0]
    names = A.names
    o = {n: sum(p.numel() for p in A.params[: names.index(n)]) for n in names}
    qw = slice(o["q.weight"], o["q.weight"] + 18)
    assert torch.all(D[qw] == 0) and torch.all(D[:, qw] == 0)  # rows and columns, symmetric
    # the rest is exact: compare with the operator over the other parameters, where q.weight's
    # forward STE acts as a constant rounding (a twice-differentiable model of the same values)
    rest = [n for n in names if n != "q.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        R = op(model, cross_entropy(), batches, params=rest).dense()
    idx = torch.cat([torch.arange(o[n], o[n] + dict(model.named_parameters())[n].numel()) for n in rest])
    assert rel(D[idx][:, idx], R) < 1e-12


@pytest.mark.parametrize("mutate", [_mul_data, _replace_module, _load_assign], ids=lambda f: f.__name__.strip("_"))
def test_uncached_operator_follows_every_change_without_a_snapshot(mutate):
    model = make_model(0)
    batches = make_batches([5, 3])
    H = Hessian(model, cross_entropy(), batches, cache_graph=False)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    H @ v
    mutate(model)
    assert rel(H @ v, Hessian(model, cross_entropy(), batches) @ v) < 1e-12
    assert H._core.tracker._values == []  # nothing cached, nothing copied


# ------------------------------------------------------------------ loss modules; the exactness of the value check
def test_a_loss_module_holds_its_teacher_but_no_operator_takes_its_parameters(model, teacher):
    loss = distillation(teacher, temperature=3.0, ce_scale=0.5, kd_scale=2.0, reduction="mean")
    assert isinstance(loss, nn.Module) and dict(loss.named_children()) == {"teacher": teacher}
    assert [id(p) for p in loss.parameters()] == [id(p) for p in teacher.parameters()]
    batches = make_batches([5])
    for A in (Hessian(model, loss, batches), GGN(model, loss, batches)):  # the student's parameters only
        assert A.names == [n for n, _ in model.named_parameters()]
        assert A.shape[0] == sum(p.numel() for p in model.parameters())
    x, y = batches[0]
    with torch.no_grad():
        t, s = teacher(x), model(x)
    expected = 0.5 * F.cross_entropy(s, y) + 2.0 * 9.0 * F.kl_div(
        F.log_softmax(s / 3.0, -1), F.log_softmax(t / 3.0, -1), reduction="sum", log_target=True) / s.numel()
    assert abs(loss(model, (x, y)).item() - expected.item()) < 1e-12  # an independent evaluation
    assert repr(loss) == "distillation(teacher=TinyCNN, temperature=3, ce_scale=0.5, kd_scale=2, reduction='mean')"


def test_the_change_of_a_loss_module_is_named(model, teacher):
    loss = kl_to_teacher(teacher, temperature=2.0)
    tracker = StateTracker(model, loss, modes=False)
    tracker.snapshot()
    assert tracker.changed() is None
    loss.temperature = 4.0
    assert tracker.changed() == "loss_fn.temperature"
    loss.temperature = 2.0
    assert tracker.changed() is None
    teacher.fc.bias.data.add_(1.0)
    assert tracker.changed() == "loss_fn.teacher.fc.bias"


def test_the_value_check_compares_bytes_exactly(model):
    with torch.no_grad():
        model.fc.bias[0] = 0.0
        model.fc.bias[1] = float("nan")  # NaN equals itself bit for bit: not a change on every check
        model.conv.weight = nn.Parameter(model.conv.weight.detach().transpose(0, 1).contiguous().transpose(0, 1))
    assert not model.conv.weight.is_contiguous()  # compared through NumPy, not memcmp
    tracker = StateTracker(model, cross_entropy())
    tracker.snapshot()
    assert tracker.changed() is None and tracker.changed() is None
    model.fc.bias.data[0] = -0.0  # equal as a number, another value; through .data: no version bump
    assert tracker.changed() == "model.fc.bias"
    tracker.snapshot()
    model.conv.weight.data[1, 0, 0, 0] += 1.0
    assert tracker.changed() == "model.conv.weight"
