"""Trace, eigenpair and spectral-density estimators against exact answers (float64)."""

import math

import numpy as np
import pytest
import torch

from conftest import exact_hessian, make_batches
from landscape.curvature import CurvatureError, Hessian, hutchinson, hutchpp, lanczos, power_iteration, slq
from landscape.curvature.operators import _generator, rademacher
from landscape.losses import distillation

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def problem(model, teacher):
    loss = distillation(teacher, temperature=3.0, ce_scale=1.0, kd_scale=1.0)
    batches = make_batches([5, 3])
    Hx, _, _ = exact_hessian(model, loss, batches)
    return Hessian(model, loss, batches), Hx


def sym_matrix(eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(eigs)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.as_tensor(eigs, dtype=torch.float64)) @ Q.T


# ------------------------------------------------------------------ eigenpairs
def test_lanczos_top3_to_1e8(problem):
    H, Hx = problem
    exact = torch.linalg.eigvalsh(Hx).flip(0)
    pairs = H.eigenpairs(k=3, method="lanczos", tol=1e-12)
    assert torch.allclose(pairs.values, exact[:3], rtol=0, atol=1e-8 * float(exact[0]))
    V = pairs.vectors
    assert torch.allclose(V.T @ V, torch.eye(3, dtype=torch.float64), atol=1e-8)
    true_res = torch.linalg.vector_norm(Hx @ V - V * pairs.values, dim=0)
    assert torch.all(pairs.residuals < 1e-8 * exact[0]) and torch.all(true_res < 1e-7 * exact[0])
    assert pairs.n_matvecs < H.shape[0]
    values, vectors = pairs  # unpacks as the contract says
    assert values is pairs.values and vectors.shape == (H.shape[0], 3)


def test_power_iteration_to_1e4(problem):
    H, Hx = problem
    exact = torch.linalg.eigvalsh(Hx).flip(0)
    pairs = H.eigenpairs(k=2, method="power", tol=1e-6, max_iter=3000)  # tol: relative residual
    assert pairs.converged and pairs.residual <= 1e-6
    assert torch.allclose(pairs.values, exact[:2], rtol=1e-4, atol=0)
    V = pairs.vectors
    assert torch.allclose(torch.linalg.vector_norm(V, dim=0), torch.ones(2, dtype=torch.float64))
    true_res = torch.linalg.vector_norm(Hx @ V - V * pairs.values, dim=0)
    assert torch.allclose(pairs.residuals, true_res, rtol=1e-6, atol=1e-12)


def test_eigsh_path(problem):
    H, Hx = problem
    exact = torch.linalg.eigvalsh(Hx).flip(0)
    pairs = H.eigenpairs(k=2, method="eigsh", tol=1e-10)
    assert torch.allclose(pairs.values, exact[:2], rtol=1e-8)
    assert torch.all(pairs.residuals < 1e-6 * exact[0])


@pytest.mark.parametrize("method", [power_iteration, lanczos])
def test_which_la_and_lm_with_negative_dominant(method):
    A = sym_matrix([-10.0, -3.0, 5.0, 4.0] + [0.1 * i for i in range(16)], seed=3)
    la = method(A, k=2, which="LA", tol=1e-6, max_iter=2000)
    lm = method(A, k=2, which="LM", tol=1e-6, max_iter=2000)
    assert la.converged and lm.converged
    assert np.allclose(la.values.numpy(), [5.0, 4.0], rtol=1e-5)
    assert np.allclose(lm.values.numpy(), [-10.0, 5.0], rtol=1e-5)


def test_power_stops_on_relative_residual():
    A = sym_matrix([1.0, 0.9] + [0.1] * 18, seed=1)
    loose = power_iteration(A, tol=1e-2)
    tight = power_iteration(A, tol=1e-6, max_iter=1000)
    assert loose.n_matvecs < tight.n_matvecs
    for pairs, tol in ((loose, 1e-2), (tight, 1e-6)):  # tol bounds ‖Av − λv‖/|λ|, measured independently
        v, lam = pairs.vectors[:, 0], float(pairs.values[0])
        assert pairs.converged and float((A @ v - lam * v).norm()) / abs(lam) <= tol
        assert math.isclose(pairs.residual, float((A @ v - lam * v).norm()) / abs(lam), rel_tol=1e-9)
    assert abs(tight.values[0] - 1.0) < 1e-10  # eigenvalue error ~ residual² / gap
    assert power_iteration(A, tol=1e-6, max_iter=3).n_matvecs == 3
    assert not power_iteration(A, tol=1e-6, max_iter=3).converged


class _Counting:
    """A dense operator that counts the products taken with it (columns of a block count one each)."""

    def __init__(self, A):
        self.A, self.shape, self.dtype, self.n = A, A.shape, A.dtype, 0

    def __matmul__(self, X):
        self.n += 1 if X.dim() == 1 else X.shape[1]
        return self.A @ X


@pytest.mark.parametrize("method", ["power", "lanczos", "eigsh"])
def test_tol_and_max_iter_mean_the_same_in_every_solver(method):
    """tol = relative residual, max_iter = cap on products, converged/residual reported alike."""
    from landscape.curvature import eigenpairs

    A = sym_matrix([3.0, 2.9, 2.0] + [0.02 * i for i in range(80)], seed=4)
    pairs = eigenpairs(A, k=2, method=method, tol=1e-7, max_iter=3000)
    V, lam = pairs.vectors, pairs.values
    true_rel = torch.linalg.vector_norm(A @ V - V * lam, dim=0) / lam.abs()
    assert pairs.converged and float(true_rel.max()) <= 1.01e-7
    assert torch.allclose(lam, torch.tensor([3.0, 2.9], dtype=torch.float64), rtol=1e-9)
    assert pairs.residual == float(pairs.relative_residuals.max()) and pairs.tol == 1e-7
    assert pairs.n_matvecs <= 3000
    hard = sym_matrix([1.0 - 1e-3 * i for i in range(200)], seed=5)  # clustered: needs many products
    for cap in (40, 41, 100):  # max_iter is a hard cap on the products really taken, for every solver
        counted = _Counting(hard)
        if method == "eigsh":  # ARPACK returns no unconverged pairs: a clear refusal instead
            with pytest.raises(CurvatureError, match=f"max_iter={cap}"):
                eigenpairs(counted, k=2, method=method, tol=1e-12, max_iter=cap)
        else:
            capped = eigenpairs(counted, k=2, method=method, tol=1e-12, max_iter=cap)
            assert not capped.converged and capped.n_matvecs == counted.n <= cap
        assert 0 < counted.n <= cap, (method, cap, counted.n)
    counted = _Counting(A)
    again = eigenpairs(counted, k=2, method=method, tol=1e-7, max_iter=pairs.n_matvecs)
    assert again.n_matvecs == counted.n <= pairs.n_matvecs  # n_matvecs: the products really taken
    with pytest.raises(CurvatureError, match="max_iter"):
        eigenpairs(A, k=2, method=method, max_iter=0)
    with pytest.raises(CurvatureError, match="tol"):
        eigenpairs(A, k=2, method=method, tol=-1.0)


# ------------------------------------------------------------------ trace
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_4_stderr(problem, method):
    H, Hx = problem
    exact = float(torch.trace(Hx))
    for seed in range(3):
        est = H.trace(method=method, max_matvecs=60, seed=seed)
        assert est.n_matvecs == 60
        assert 0 < est.stderr < abs(exact)
        assert abs(est.value - exact) < 4 * est.stderr, (seed, est, exact)


def test_hutchinson_stderr_formula_and_rtol_rule(problem):
    H, Hx = problem
    est = H.trace(max_matvecs=20, seed=0)
    assert not est.converged and not H.trace(method="hutch++", max_matvecs=9, seed=0).converged  # cap alone
    s = np.array(est.samples)
    assert math.isclose(est.stderr, s.std(ddof=1) / math.sqrt(len(s)), rel_tol=1e-12)
    # the stopping rule is operator-agnostic: exercise it on the exact matrix (fast)
    stopped = hutchinson(Hx, max_matvecs=500, rtol=0.05, seed=1)
    assert stopped.converged and 10 <= stopped.n_matvecs < 500
    assert stopped.stderr < 0.05 * abs(stopped.value)
    capped = hutchinson(Hx, max_matvecs=12, rtol=1e-9, seed=1)
    assert capped.n_matvecs == 12 and not capped.converged
    pp = hutchpp(Hx, max_matvecs=2000, rtol=0.05, seed=2)
    assert pp.converged and pp.n_matvecs < 2000 and pp.stderr < 0.05 * abs(pp.value)
    assert pp.n_matvecs - len(pp.samples) == 2 * 20  # the sketch does not grow with the cap


def test_hutchpp_beats_hutchinson_on_decaying_spectrum():
    A = sym_matrix([1.0 / (i + 1) ** 2 for i in range(200)], seed=5)
    exact = float(torch.trace(A))
    err_h = np.mean([abs(hutchinson(A, max_matvecs=30, seed=s).value - exact) for s in range(40)])
    err_pp = np.mean([abs(hutchpp(A, max_matvecs=30, seed=s).value - exact) for s in range(40)])
    assert err_pp < 0.5 * err_h, (err_pp, err_h)
    # and its stderr is honest: errors inside 4 stderr for all seeds
    for s in range(40):
        e = hutchpp(A, max_matvecs=30, seed=s)
        assert abs(e.value - exact) < 4 * e.stderr + 1e-12


def test_trace_bad_arguments():
    A = sym_matrix([1.0, 2.0, 3.0])
    with pytest.raises(CurvatureError, match="max_matvecs"):
        hutchinson(A, max_matvecs=0)
    with pytest.raises(CurvatureError, match="rtol"):
        hutchinson(A, rtol=-1)
    with pytest.raises(CurvatureError, match="square"):
        hutchinson(torch.zeros(3, 2))
    with pytest.raises(CurvatureError, match="sketch_size"):
        hutchpp(A, max_matvecs=6, sketch_size=3)


# ------------------------------------------------------------------ spectral density
def test_slq_quadrature_exact_for_low_moments(problem):
    H, Hx = problem
    n = H.shape[0]
    dens = H.density(n_runs=3, n_steps=12, seed=7)
    assert dens.n_runs == 3 and dens.n_matvecs == 36
    gen = _generator(7)
    us = [rademacher(n, 1, gen, torch.float64, torch.device("cpu"))[:, 0] / math.sqrt(n) for _ in range(3)]
    for j in range(0, 6):
        quad = np.mean([float(u @ torch.linalg.matrix_power(Hx, j) @ u) for u in us])
        assert math.isclose(dens.moments(j), quad, rel_tol=1e-8, abs_tol=1e-12), j
    assert math.isclose(dens.moments(0), 1.0, rel_tol=1e-12)


def test_slq_moments_match_normalised_traces(problem):
    H, Hx = problem
    n = H.shape[0]
    dens = slq(Hx, n_runs=60, n_steps=15, seed=0)  # the dense exact matrix is an operator too
    for j in (1, 2, 3):
        Mj = torch.linalg.matrix_power(Hx, j)
        target = float(torch.trace(Mj)) / n
        per_run = np.array([float((w * t**j).sum()) for t, w in zip(dens.nodes, dens.weights)])
        se = per_run.std(ddof=1) / math.sqrt(len(per_run))
        assert abs(dens.moments(j) - target) < 4 * se, (j, dens.moments(j), target, se)


def test_density_handles_negative_eigenvalues_and_integrates_to_one():
    eigs = [-2.0, -1.0, -0.5] + [0.01 * i for i in range(40)] + [3.0, 8.0]
    A = sym_matrix(eigs, seed=2)
    dens = slq(A, n_runs=4, n_steps=len(eigs), seed=0)  # full Krylov space: nodes = eigenvalues
    assert min(dens.spectral_range) < -1.9 and max(dens.spectral_range) > 7.9
    grid = dens.grid(4000)
    phi = dens.evaluate(grid)
    assert isinstance(phi, torch.Tensor) and isinstance(grid, torch.Tensor)  # one array type: torch
    grid, phi = grid.numpy(), phi.numpy()
    assert np.all(phi >= 0)
    assert abs(np.trapezoid(phi, grid) - 1.0) < 1e-3
    wide = np.linspace(-6.0, 12.0, 4000)
    assert abs(np.trapezoid(dens.evaluate(wide, sigma=0.5).numpy(), wide) - 1.0) < 1e-3
    with pytest.raises(ValueError, match="sigma"):
        dens.evaluate(grid, sigma=0)
    # mass below zero equals the fraction of negative eigenvalues (3/45), up to sampling
    assert abs(np.trapezoid(phi[grid < -0.25], grid[grid < -0.25]) - 3 / 45) < 0.05


def test_results_print_short_and_hold_tensors(problem):
    H, _ = problem
    dens = H.density(n_runs=2, n_steps=30)
    text = repr(dens)
    assert len(text) < 200 and text.startswith("SpectralDensity(dim=") and "n_runs=2" in text
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in dens.nodes + dens.weights)
    pairs = H.eigenpairs(k=2, method="lanczos")
    assert len(repr(pairs)) < 250 and "vectors=(" in repr(pairs) and "converged=" in repr(pairs)
    est = H.trace(max_matvecs=10)
    assert len(repr(est)) < 200 and "samples" not in repr(est)
    assert math.isnan(est.residual) and math.isnan(dens.residual) and dens.converged
    assert not est.converged  # no rtol: ten probes is a budget, not a stopping rule met
    assert isinstance(pairs.residual, float) and pairs.residual <= 1e-3


def test_a_non_finite_vector_or_product_is_refused_not_returned():
    """A NaN in v, or a finite loss whose second derivative is not finite, gives an error, never
    a NaN 'curvature' that an estimator would only mark unconverged."""
    import pytest as _pytest

    from landscape.curvature import CurvatureError, Hessian

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([0.0, 1.0], dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    batches = [(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))]

    def sqrt_loss(m, batch):  # sqrt(|w|)·x: finite at w = 0, its second derivative is not
        x, _ = batch
        return (m.w.abs().sqrt().sum() * x).mean()

    H = Hessian(model, sqrt_loss, batches)
    with _pytest.raises(CurvatureError, match="vector holds NaN"):
        H @ torch.tensor([float("nan"), 1.0], dtype=torch.float64)
    with _pytest.raises(CurvatureError, match="came out NaN or inf although the loss is finite"):
        H @ torch.tensor([1.0, 0.0], dtype=torch.float64)
    w.data.fill_(1.0)   # away from 0 the same operator answers again (rebuilt: weights changed)
    assert torch.allclose(H @ torch.tensor([1.0, 0.0], dtype=torch.float64),
                          torch.tensor([-0.25, 0.0], dtype=torch.float64))
