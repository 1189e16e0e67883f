"""One way to multiply (``H @ v``): ``matvec``/``matmat`` are deprecated aliases giving the same
numbers; the parameters nobody passed are gone, and the trace estimators' numbers did not move."""

from __future__ import annotations

import pytest
import torch

from conftest import exact_hessian, make_batches, make_model
from landscape.curvature import Hessian, hutchinson, hutchpp
from landscape.losses import cross_entropy


pytestmark = pytest.mark.usefixtures("one_thread")


def test_matvec_and_matmat_warn_and_equal_the_exact_hessian_product():
    # the problem of test_curvature_hessian's test_hvp_matches_exact[ce]: its exact Hessian is memoised
    model, batches, loss = make_model(0), make_batches([6]), cross_entropy()
    H = Hessian(model, loss, batches)
    exact = exact_hessian(model, loss, batches)[0]
    g = torch.Generator().manual_seed(3)
    V = torch.randn(H.shape[0], 2, generator=g, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match=r"Hessian.matvec\(v\) is deprecated.*use A @ v"):
        mv = H.matvec(V[:, 0])
    with pytest.warns(DeprecationWarning, match=r"Hessian.matmat\(V\) is deprecated.*use A @ V"):
        mm = H.matmat(V)
    torch.testing.assert_close(mv, exact @ V[:, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mm, exact @ V, rtol=1e-10, atol=1e-12)


def test_trace_estimators_draw_their_probes_in_blocks_of_ten_as_before():
    """``block_size`` is gone, not changed: probes are still drawn 10 at a time from one
    generator (an (n, 10) Rademacher block, row-major), so each estimate is what it was."""
    g = torch.Generator().manual_seed(0)
    B = torch.randn(12, 12, generator=g, dtype=torch.float64)
    A = B + B.T
    est = hutchinson(A, max_matvecs=25, seed=7)
    gen = torch.Generator(device="cpu").manual_seed(7)
    samples = []
    for b in (10, 10, 5):  # by hand: three blocks, the last one short
        Z = torch.randint(0, 2, (12, b), generator=gen, dtype=torch.int8).double() * 2 - 1
        samples += (Z * (A @ Z)).sum(dim=0).tolist()
    assert est.n_matvecs == 25 and est.value == pytest.approx(sum(samples) / 25, rel=1e-12)
    with pytest.raises(TypeError, match="block_size"):
        hutchinson(A, block_size=5)
    with pytest.raises(TypeError, match="block_size"):
        hutchpp(A, block_size=5)
