"""analyze_model on models that did not come from our trainer: exact checks and a foreign quantizer."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape import losses
from landscape.analyzers import COLUMNS, AnalysisError, analyze_model


def _mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _batches(seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g, dtype=dtype), torch.randint(0, 3, (16,), generator=g))
            for _ in range(2)]


def _exact_hessian(model, loss_fn, batches):
    """Dense Hessian of the mean loss w.r.t. the flat parameters, by torch.func."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in model.parameters()])

    def f(flat):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            params[n] = flat[i:i + k].view(s)
            i += k
        total = sum(len(b[0]) * loss_fn(lambda x: torch.func.functional_call(model, params, (x,)), b)
                    for b in batches)
        return total / sum(len(b[0]) for b in batches)

    return torch.func.hessian(f)(flat0), torch.func.grad(f)(flat0)


def _ce(forward, batch):
    return F.cross_entropy(forward(batch[0]), batch[1])


def test_trace_eigen_density_match_the_exact_hessian():
    model, batches = _mlp(), _batches()
    H, g = _exact_hessian(model, _ce, batches)
    evals, evecs = torch.linalg.eigh(H)
    settings = {"trace": {"max_matvecs": 200, "rtol": None, "per_layer": True},
                "eigen": {"method": "lanczos", "tol": 1e-10, "max_iter": 83, "n_points": 5},
                "density": {"n_runs": 4, "n_steps": 20, "grid_points": 50}}
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    t = analyze_model(model, {"ce": losses.cross_entropy()}, batches, analyses=["trace", "eigen", "density"],
                      settings=settings)
    # the model is left as it was
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for df in t.values():
        assert list(df.columns[: len(COLUMNS)]) == COLUMNS

    tr = t["trace"].query("metric == 'trace' and layer == 'all'").iloc[0]
    assert abs(tr["value"] - float(torch.trace(H))) <= 4 * tr["stderr"]
    assert tr["n_matvecs"] == 200
    # per layer: the trace of the layer's own diagonal block
    diag, i = torch.diagonal(H), 0
    for layer, size in (("0", 6 * 8 + 8), ("2", 8 * 3 + 3)):
        row = t["trace"].query("layer == @layer").iloc[0]
        assert abs(row["value"] - float(diag[i:i + size].sum())) <= 4 * row["stderr"] + 1e-12
        i += size

    eg = t["eigen"]
    lam = eg.query("metric == 'top_eigenvalue'")["value"].item()
    assert lam == pytest.approx(float(evals[-1]), rel=1e-8)
    scale = eg.query("metric == 'slice_scale'")["value"].item()
    assert scale == pytest.approx(abs(float(g @ evecs[:, -1])), rel=1e-6, abs=1e-10)
    sl = eg.query("metric == 'slice_loss'").sort_values("k")
    assert set(sl["slice"]) == {"requantized", "requantized_unit"}  # no quantizer of ours: nothing to freeze
    with torch.no_grad():
        direct = float(sum(len(b[0]) * _ce(model, b) for b in batches) / 32)
    assert sl.loc[sl["k"] == 0, "value"].to_numpy() == pytest.approx([direct, direct], rel=1e-10)
    # the unit slice at k is the loss at θ + k·e, evaluated here directly at k = 0.5
    e = evecs[:, -1] * torch.sign(evecs[:, -1] @ torch.ones_like(evecs[:, -1]))
    unit = sl[(sl["slice"] == "requantized_unit") & (sl["k"] == 0.5)]["value"].item()
    with torch.no_grad():
        here = torch.nn.utils.parameters_to_vector(model.parameters())
        vals = []
        for sign in (1.0, -1.0):  # e is defined up to its sign
            torch.nn.utils.vector_to_parameters(here + 0.5 * sign * e.to(here), model.parameters())
            vals.append(float(sum(len(b[0]) * _ce(model, b) for b in batches) / 32))
        torch.nn.utils.vector_to_parameters(here, model.parameters())
    assert min(abs(unit - v) for v in vals) <= 1e-8 * max(1.0, abs(unit))

    ritz = t["density"].query("metric == 'ritz'")
    assert ritz["x"].min() >= float(evals[0]) - 1e-8 and ritz["x"].max() <= float(evals[-1]) + 1e-8
    # the table holds the engine's quadrature faithfully: its first moment is the engine's
    from landscape.curvature import Hessian

    seed = int(ritz["probe_seed"].iloc[0])  # the probes of this point, recorded in the table
    sd = Hessian(model, losses.cross_entropy(), batches).density(n_runs=4, n_steps=20, seed=seed)
    mean = float((ritz["x"] * ritz["value"]).sum())
    assert mean == pytest.approx(sd.moments(1), rel=1e-6)


def test_params_as_module_names_or_modules_with_groups_and_per_layer():
    """params=["0"] and params=m[0] select layer 0 (groups are matched against the resolved names),
    and a group named like a per_layer layer gets its own rows ("group:0" beside "0")."""
    model, batches = _mlp(), _batches()
    H, _ = _exact_hessian(model, _ce, batches)
    H0 = H[:56, :56]  # layer 0: weight (8, 6) and bias (8), first in the flat order
    settings = {"trace": {"max_matvecs": 40, "rtol": None, "per_layer": True},
                "eigen": {"method": "lanczos", "tol": 1e-10, "max_iter": 56, "n_points": 3,
                          "slices": ["requantized_unit"]}}
    ce = {"ce": losses.cross_entropy()}
    tables = [analyze_model(model, ce, batches, analyses=["trace", "eigen"], settings=settings, params=params,
                            groups=["0"]) for params in (["0"], model[0])]
    for t in tables:
        tr = t["trace"].query("metric == 'trace'").set_index("layer")
        assert list(tr.index) == ["all", "0", "group:0"]  # one row per (loss, layer, metric)
        assert abs(tr.loc["all", "value"] - float(torch.trace(H0))) <= 4 * tr.loc["all", "stderr"]
        assert tr.loc["group:0", "value"] == pytest.approx(tr.loc["0", "value"], rel=1e-12)  # one block, one seed
        eig = t["eigen"].query("metric == 'top_eigenvalue'").set_index("layer")
        assert list(eig.index) == ["all", "group:0"]
        assert eig["value"].to_numpy() == pytest.approx([float(torch.linalg.eigvalsh(H0)[-1])] * 2, rel=1e-8)
    pd.testing.assert_frame_equal(tables[0]["trace"], tables[1]["trace"])
    with pytest.raises(AnalysisError, match=r"params=.*'nope' is neither"):
        analyze_model(model, ce, batches, analyses=["trace"], params=["nope"], groups=["0"])
    with pytest.raises(AnalysisError, match=r"groups=.*prefix '2' names no parameter"):
        analyze_model(model, ce, batches, analyses=["trace"], params=model[0], groups=["2"])


# ----------------------------------------------------------------------------- a foreign quantizer


def _sym_fake_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-tensor fake quantization (not our rule), identity STE: w + (q(w) - w).detach()."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().max() / qmax
    q = torch.clamp(torch.round(w.detach() / scale), -qmax, qmax) * scale
    return w + (q - w.detach())


class SymQuantLinear(nn.Linear):
    bits = 4

    def forward(self, x):
        return F.linear(x, _sym_fake_quant(self.weight, self.bits), self.bias)


def _sym_quantize(model: nn.Module, bits: int) -> nn.Module:
    student = copy.deepcopy(model)
    for name, m in list(student.named_children()):
        if type(m) is nn.Linear:
            q = SymQuantLinear(m.in_features, m.out_features)
            q.load_state_dict(m.state_dict())
            q.bits = bits
            setattr(student, name, q)
    return student.eval()


@pytest.fixture(scope="module")
def digits_teacher():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(teacher(X[:1200]), y[:1200]).backward()
        opt.step()
    batches = [(X[1200 + 64 * i: 1200 + 64 * (i + 1)], y[1200 + 64 * i: 1200 + 64 * (i + 1)]) for i in range(2)]
    return teacher.eval(), batches


def test_our_quantizer_against_a_symmetric_per_tensor_rule(digits_teacher):
    from landscape.quant import calibrate, quantize_model

    teacher, batches = digits_teacher
    ours = calibrate(quantize_model(teacher, 3, 8), batches)
    sym = _sym_quantize(teacher, 3)
    loss_fns = {"ce": losses.cross_entropy(), "kl": losses.kl_to_teacher(teacher, temperature=4.0)}
    settings = {"trace": {"max_matvecs": 20}, "eigen": {"n_points": 5, "max_iter": 30},
                "density": {"n_runs": 1, "n_steps": 10, "grid_points": 20}}
    results = {}
    for name, student in (("ours", ours), ("symmetric", sym)):
        t = analyze_model(student, loss_fns, batches, settings=settings, name=name)
        assert set(t) == {"cosine", "trace", "eigen", "density"}
        for df in t.values():
            assert set(df["run"]) == {name}
            assert np.isfinite(df["value"]).all()
        results[name] = t
    # the two rules quantize differently, so the curvature they see differs
    tr = {n: r["trace"].set_index("loss")["value"] for n, r in results.items()}
    assert not np.allclose(tr["ours"].to_numpy(), tr["symmetric"].to_numpy())

    # the foreign student's cosine equals the one from two autograd gradients by hand
    params = list(sym.parameters())
    n = sum(len(b[0]) for b in batches)
    grads = []
    for fn in loss_fns.values():
        gs = [torch.zeros_like(p) for p in params]
        for b in batches:
            for acc, gp in zip(gs, torch.autograd.grad(fn(sym, b), params)):
                acc += len(b[0]) / n * gp
        grads.append(torch.cat([x.flatten() for x in gs]).double())
    expected = float(grads[0] @ grads[1] / (grads[0].norm() * grads[1].norm()))
    cos = results["symmetric"]["cosine"].query("metric == 'cosine' and layer == 'all'")["value"].item()
    assert cos == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_bad_input_to_analyze_model():
    model, batches = _mlp(), _batches()
    ce = {"ce": losses.cross_entropy()}
    with pytest.raises(AnalysisError, match="consecutive checkpoints"):
        analyze_model(model, ce, batches, analyses=["interepoch"])
    with pytest.raises(AnalysisError, match="did you mean 'density'"):
        analyze_model(model, ce, batches, analyses=["densty"])
    with pytest.raises(AnalysisError, match="two losses"):
        analyze_model(model, ce, batches, analyses=["cosine"])
    with pytest.raises(AnalysisError, match="no batches"):
        analyze_model(model, ce, [], analyses=["trace"])
    with pytest.raises(AnalysisError, match="nn.Module"):
        analyze_model(lambda x: x, ce, batches, analyses=["trace"])
