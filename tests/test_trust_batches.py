"""The operator answers for the batches as they are now (issue 19 §3): after an in-place write
to a batch, a replaced, added or removed batch, a product through cached graphs equals a
fresh operator's (checked against the exact Hessian in float64)."""

import pytest
import torch

from conftest import exact_hessian, make_batches, make_model
from landscape.curvature import GGN, Hessian
from landscape.curvature.batch_state import BatchWatch
from landscape.losses import cross_entropy


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _edits():
    other = make_batches([5], seed=7)[0]

    def scale_inplace(bs):
        bs[0][0].mul_(3)

    def through_data(bs):
        bs[0][0].data.mul_(3)

    def through_numpy(bs):
        bs[1][0].numpy()[0] += 1.0

    def labels_inplace(bs):
        bs[0][1][:2] = (bs[0][1][:2] + 1) % 4

    def replace_item(bs):
        bs[1] = other

    def append(bs):
        bs.append(other)

    def pop(bs):
        bs.pop()

    def replace_tensor_in_list_batch(bs):
        bs[0][0] = bs[0][0] * 2

    return [scale_inplace, through_data, through_numpy, labels_inplace, replace_item, append, pop,
            replace_tensor_in_list_batch]


@pytest.mark.parametrize("edit", _edits(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("op", [Hessian, GGN])
def test_a_product_answers_for_the_batches_as_they_are_now(edit, op, one_thread):
    model = make_model(0)
    bs = [list(b) for b in make_batches([6, 4, 3])]
    H = op(model, cross_entropy(), bs, cache_graph=True)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    before = H @ v
    edit(bs)
    after = H @ v
    fresh = op(model, cross_entropy(), bs, cache_graph=False) @ v
    assert rel(after, fresh) < 1e-12
    if not (op is GGN and edit.__name__ == "labels_inplace"):  # CE's GGN does not depend on labels
        assert rel(before, fresh) > 1e-6  # the edit changed the answer: the test can fail
    if op is Hessian:
        Hx = exact_hessian(model, cross_entropy(), [tuple(b) for b in bs])[0]
        assert rel(after, Hx @ v) < 1e-10


def test_a_tuple_of_tuples_is_watched_too(one_thread):
    model = make_model(0)
    bs = tuple(make_batches([6, 4]))
    H = Hessian(model, cross_entropy(), bs)
    v = torch.ones(H.shape[0], dtype=torch.float64)
    H @ v
    bs[1][0].data.add_(0.5)
    assert rel(H @ v, Hessian(model, cross_entropy(), bs, cache_graph=False) @ v) < 1e-12
    assert H._core.n_fills == 2


def test_nothing_changed_means_no_rebuild(one_thread):
    model = make_model(0)
    bs = make_batches([6, 4])
    H = Hessian(model, cross_entropy(), bs)
    v = torch.ones(H.shape[0], dtype=torch.float64)
    for _ in range(3):
        H @ v
    assert H._core.n_fills == 1


def test_the_watch_names_what_changed():
    bs = [(torch.ones(2, 3), torch.tensor([0, 1])), {"x": torch.zeros(1), "n": 3}]
    w = BatchWatch(bs)
    w.snapshot()
    assert w.changed() is None
    bs[1]["n"] = 4
    assert "value inside a batch" in w.changed()
    bs[1]["n"] = 3
    assert w.changed() is None
    bs[0][1].data[0] = 1
    assert w.changed() == "batch 0, tensor 1 (its values changed)"


def test_requires_grad_toggled_after_a_product_is_named(one_thread):
    from landscape.curvature import CurvatureError

    model = make_model(0)
    H = Hessian(model, cross_entropy(), make_batches([6, 4]))
    v = torch.ones(H.shape[0], dtype=torch.float64)
    first = H @ v
    model.fc.bias.requires_grad_(False)
    with pytest.raises(CurvatureError, match=r"\['fc.bias'\].*no longer require grad.*build a new operator"):
        H @ v
    model.fc.bias.requires_grad_(True)
    assert torch.equal(H @ v, first)
