"""The suite's exact-Hessian reference (conftest.exact_hessian) is memoised on content: a change
that keeps every sum (a permutation of weights, of a teacher's weights, of the labels) is a new
problem and gets a new Hessian; the same content in new objects is a cache hit."""

import torch

from conftest import _exact_hessian, content_key, exact_hessian, make_batches, make_model
from landscape.losses import cross_entropy, kl_to_teacher


def _swap_two(t: torch.Tensor) -> None:
    """Swap two different entries of ``t`` in place: every sum of ``t`` stays the same."""
    flat = t.data.view(-1)
    j = int((flat != flat[0]).nonzero()[0])
    flat[0], flat[j] = flat[j].clone(), flat[0].clone()


def test_a_sum_preserving_change_of_the_weights_is_a_new_hessian(one_thread):
    model, batches = make_model(0), make_batches([5])
    before = exact_hessian(model, cross_entropy(), batches)[0]
    _swap_two(model.fc.weight)
    after = exact_hessian(model, cross_entropy(), batches)[0]
    fresh = _exact_hessian(model, cross_entropy(), batches)[0]  # no cache at all
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)


def test_labels_and_a_teachers_weights_are_part_of_the_key(one_thread):
    model, teacher = make_model(0), make_model(123)
    (x, y), = make_batches([6])
    y2 = y.roll(1)
    assert not torch.equal(y, y2) and int(y.sum()) == int(y2.sum())
    a = exact_hessian(model, cross_entropy(), [(x, y)])[0]
    b = exact_hessian(model, cross_entropy(), [(x, y2)])[0]
    assert torch.equal(b, _exact_hessian(model, cross_entropy(), [(x, y2)])[0]) and not torch.equal(a, b)
    kl = kl_to_teacher(teacher, 2.0)
    k1 = exact_hessian(model, kl, [(x, y)])[0]
    _swap_two(teacher.fc.weight)
    k2 = exact_hessian(model, kl, [(x, y)])[0]
    assert torch.equal(k2, _exact_hessian(model, kl, [(x, y)])[0]) and not torch.equal(k1, k2)


def test_the_same_content_in_new_objects_is_one_entry():
    batches = make_batches([4])
    first = content_key(make_model(0), cross_entropy(), batches)[0]
    assert content_key(make_model(0), cross_entropy(), [tuple(t.clone() for t in batches[0])])[0] == first
    assert content_key(make_model(1), cross_entropy(), batches)[0] != first
    assert content_key(make_model(0), kl_to_teacher(make_model(5), 1.0), batches)[0] != \
        content_key(make_model(0), kl_to_teacher(make_model(6), 1.0), batches)[0]
    assert content_key(make_model(0), cross_entropy(), batches, names=["fc.bias"])[0] != first
