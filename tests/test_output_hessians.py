"""The softmax output Hessians' Fisher factors: the sampled path against the one-hot formula it
replaced (same draws, same numbers), at a vocabulary-sized C without a C×C tensor (every tensor
any op makes is measured), and the exact path's refusal above EXACT_FISHER_MAX_BYTES."""

import pytest
import torch

from landscape import output_hessians
from landscape.curvature import CurvatureError
from landscape.output_hessians import SoftmaxOutputHessian, SumOutputHessian
from tensor_sizes import LargestTensor


def _probs(B, C, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(B, C, generator=g, dtype=dtype), dim=-1)


def _onehot_factors(p, scale, S, gen):
    """The implementation before the scatter (a one-hot from torch.eye(C)), as the reference."""
    eye = torch.eye(p.shape[1], dtype=p.dtype)
    if S is None:
        return (scale * p.T)[:, :, None].sqrt() * (p[None, :, :] - eye[:, None, :])
    idx = torch.multinomial(p.detach().double().cpu(), S, replacement=True, generator=gen)
    return (scale / S) ** 0.5 * (p[None] - eye[idx.T])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("S", [None, 1, 7])
def test_factors_equal_the_one_hot_formula(dtype, S):
    p, scale = _probs(5, 9, dtype), 0.25
    got = SoftmaxOutputHessian(p, scale).fisher_factors(S, None if S is None else torch.Generator().manual_seed(4))
    ref = _onehot_factors(p, scale, S, None if S is None else torch.Generator().manual_seed(4))
    assert got.dtype == dtype and got.shape == ref.shape == ((9 if S is None else S), 5, 9)
    assert torch.equal(got, ref)  # same draws, same arithmetic: bit for bit


def test_exact_factors_reproduce_the_blocks_and_sum_concatenates():
    p = _probs(4, 6)
    M = SoftmaxOutputHessian(p, 0.5)
    G = M.fisher_factors()
    torch.testing.assert_close(torch.einsum("kbi,kbj->bij", G, G), M.dense(), rtol=1e-13, atol=1e-15)
    both = SumOutputHessian([M, SoftmaxOutputHessian(_probs(4, 6, seed=1), 2.0)])
    Gs = both.fisher_factors()
    torch.testing.assert_close(torch.einsum("kbi,kbj->bij", Gs, Gs), both.dense(), rtol=1e-13, atol=1e-15)


def test_sampled_factors_at_a_vocabulary_never_make_a_v_by_v_tensor():
    V, N, S, scale = 50_000, 2, 3, 0.5
    p = _probs(N, V, torch.float32)
    with LargestTensor() as seen:
        G = SoftmaxOutputHessian(p, scale).fisher_factors(S, torch.Generator().manual_seed(0))
    assert G.shape == (S, N, V) and G.dtype == torch.float32
    assert seen.numel <= S * N * V  # the old one-hot made eye(V): V*V = 2.5e9 numbers (10 GB)
    # every row is sqrt(κ/S) (π_i − e_y): π everywhere but one entry, which is π_y − 1
    label = (G / (scale / S) ** 0.5 - p[None]).abs() > 0.5
    assert torch.equal(label.sum(-1), torch.ones(S, N, dtype=torch.long))
    torch.testing.assert_close(G, (scale / S) ** 0.5 * (p[None] - label.float()), rtol=0, atol=1e-7)


def test_exact_factors_refused_above_the_limit_naming_the_size_and_the_ggn(monkeypatch):
    with LargestTensor() as seen:
        with pytest.raises(CurvatureError, match=r"2 rows over 50000 .*18\.6 GiB.*GGN.*mc_samples") as err:
            SoftmaxOutputHessian(_probs(2, 50_000, torch.float32), 1.0).fisher_factors()
    assert "\n" not in str(err.value) and seen.numel <= 2 * 50_000
    # the limit is on C·B·C·itemsize: exactly at it builds, one byte above refuses
    p = _probs(3, 4)
    monkeypatch.setattr(output_hessians, "EXACT_FISHER_MAX_BYTES", 4 * 3 * 4 * 8)
    assert SoftmaxOutputHessian(p, 1.0).fisher_factors().shape == (4, 3, 4)
    monkeypatch.setattr(output_hessians, "EXACT_FISHER_MAX_BYTES", 4 * 3 * 4 * 8 - 1)
    with pytest.raises(CurvatureError, match="4x3x4"):
        SoftmaxOutputHessian(p, 1.0).fisher_factors()
    assert SoftmaxOutputHessian(p, 1.0).fisher_factors(2).shape == (2, 3, 4)  # sampled: no limit
