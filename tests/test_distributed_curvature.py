"""Data-parallel curvature on 2 real gloo processes (float64): each rank holds a shard of the
batches; every product, estimator, gradient and loss equals the single-process one on the union
of the shards and is the same on every rank. Uneven shards (more and bigger batches on one rank,
or none at all), ``process_group=False``, and failures: a rank that raises inside a product makes
every rank raise (naming it), a rank that never comes is reported by the group's timeout."""

import time

import pytest
import torch

from conftest import make_batches, make_model
from distributed_helpers import run_ranks
from landscape.analyzers._common import Point, make_operator
from landscape.curvature import (GGN, CurvatureError, Hessian, gradient,
                                 gradient_cosine, hutchinson, hutchpp, lanczos, loss_slice, mean_loss,
                                 power_iteration, slq)
from landscape.losses import cross_entropy

SIZES = [5, 3, 7, 4]   # the union, in order
SHARDS = {0: [0, 1], 1: [2, 3]}  # rank 0: two batches (8 samples); rank 1: a bigger and a smaller one (11)
N_PARAMS = sum(p.numel() for p in make_model(0).parameters())


def _probe(n: int, m: int = 1) -> torch.Tensor:
    return torch.randn(n, m, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _everything(model, batches, **kw) -> dict:
    """Every estimator on the Hessian (and GGN) of ``batches``; ``kw`` go to each operator/function."""
    loss = cross_entropy()
    H = Hessian(model, loss, batches, **kw)
    V = _probe(H.shape[0], 3)
    d = _probe(H.shape[0])[:, 0]
    out = {
        "Hv": H @ V[:, 0], "HV": H @ V, "GGNv": GGN(model, loss, batches, **kw) @ V[:, 0],
        "fc_block": H.layers()["fc"] @ _probe(H.layers()["fc"].shape[0])[:, 0],
        "lanczos": lanczos(H, k=3, tol=1e-10, max_iter=N_PARAMS, seed=1).values,
        "hutchinson": torch.tensor(hutchinson(H, max_matvecs=20, seed=3).samples),
        "hutchpp": torch.tensor(hutchpp(H, max_matvecs=24, seed=3).value),
        "power": power_iteration(H, k=1, tol=1e-6, max_iter=300, seed=2).values,
        "slq": torch.cat(slq(H, n_runs=1, n_steps=8, seed=4).nodes),
        "grad": gradient(model, loss, batches, **kw),
        "loss": torch.tensor(mean_loss(model, loss, batches, **kw)),
        "slice": loss_slice(model, loss, batches, d, [-0.1, 0.0, 0.2], **kw),
        "cosine": torch.tensor([r["value"] for r in gradient_cosine(model, loss, _Scaled(loss), batches, **kw)]),
    }
    return out


class _Scaled:
    """A second loss for the cosine rows: CE plus a small weight decay term (a different gradient)."""

    name = "ce_wd"

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, model, batch):
        return self.loss(model, batch) + 1e-2 * sum((p ** 2).sum() for p in model.parameters())


def _numbers(rank, world, out):
    torch.manual_seed(0)
    model = make_model(0)
    every = make_batches(SIZES)
    mine = [every[i] for i in SHARDS[rank]]
    res = {"sharded": _everything(model, mine)}
    res["local"] = {"Hv": Hessian(model, cross_entropy(), mine, process_group=False) @ _probe(N_PARAMS)[:, 0]}
    # the analyzers' route: a point carries its group to every operator built for it (no hidden default)
    point = Point(model, {"ce": cross_entropy()}, mine, process_group=False)
    res["local"]["Hv_ctx"] = make_operator(point, "ce") @ _probe(N_PARAMS)[:, 0]
    # a rank without batches: the mean is over rank 0's shard alone
    res["empty"] = Hessian(model, cross_entropy(), mine if rank == 0 else []) @ _probe(N_PARAMS)[:, 0]
    # every rank holding all the data: the same matrix (a shard-average of identical shards)
    res["full_everywhere"] = Hessian(model, cross_entropy(), every) @ _probe(N_PARAMS)[:, 0]
    # freshness per rank: a change of the weights after a product rebuilds each rank's graphs
    H = Hessian(model, cross_entropy(), mine)
    H @ _probe(N_PARAMS)[:, 0]
    with torch.no_grad():
        model.fc.weight.mul_(1.5)
    res["changed"] = H @ _probe(N_PARAMS)[:, 0]
    res["rebuilds"] = torch.tensor(H.n_rebuilds)
    torch.save(res, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run_ranks(_numbers, 2, out)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_every_rank_gets_the_same_numbers(ranks):
    a, b = ranks
    for key in a["sharded"]:
        assert torch.equal(a["sharded"][key], b["sharded"][key]), key
    assert torch.equal(a["empty"], b["empty"]) and torch.equal(a["full_everywhere"], b["full_everywhere"])


def test_sharded_estimators_equal_the_single_process_ones_on_the_union(ranks):
    torch.set_num_threads(1)
    model = make_model(0)
    every = make_batches(SIZES)
    ref = _everything(model, every)
    got = ranks[0]["sharded"]
    for key in ("Hv", "HV", "GGNv", "fc_block", "grad", "loss", "slice", "cosine", "hutchpp", "slq"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-10, atol=1e-12, msg=key)
    torch.testing.assert_close(got["hutchinson"], ref["hutchinson"], rtol=1e-10, atol=1e-12)  # same probes
    torch.testing.assert_close(got["lanczos"], ref["lanczos"], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(got["power"], ref["power"], rtol=1e-5, atol=1e-8)
    # and the union's Hessian is the exact one (independent reference: torch.func.hessian)
    from conftest import exact_hessian

    H_exact = exact_hessian(model, cross_entropy(), every)[0]
    torch.testing.assert_close(got["HV"], H_exact @ _probe(N_PARAMS, 3), rtol=1e-10, atol=1e-12)
    top = torch.linalg.eigvalsh(H_exact).flip(0)[:3]
    torch.testing.assert_close(got["lanczos"], top, rtol=1e-8, atol=1e-10)


def test_uneven_and_empty_shards_are_weighted_by_samples(ranks):
    torch.set_num_threads(1)
    model = make_model(0)
    every = make_batches(SIZES)
    v = _probe(N_PARAMS)[:, 0]
    # the plain average of the two ranks' means would be wrong (8 vs 11 samples): check it differs
    h0 = Hessian(model, cross_entropy(), [every[i] for i in SHARDS[0]]) @ v
    h1 = Hessian(model, cross_entropy(), [every[i] for i in SHARDS[1]]) @ v
    full = Hessian(model, cross_entropy(), every) @ v
    assert not torch.allclose((h0 + h1) / 2, full, rtol=1e-6)
    torch.testing.assert_close(full, (8 * h0 + 11 * h1) / 19, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ranks[1]["empty"], h0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ranks[0]["full_everywhere"], full, rtol=1e-10, atol=1e-12)


def test_freshness_holds_on_every_rank(ranks):
    model = make_model(0)
    with torch.no_grad():
        model.fc.weight.mul_(1.5)
    ref = Hessian(model, cross_entropy(), make_batches(SIZES)) @ _probe(N_PARAMS)[:, 0]
    for r in (0, 1):
        assert int(ranks[r]["rebuilds"]) == 2
        torch.testing.assert_close(ranks[r]["changed"], ref, rtol=1e-10, atol=1e-12)


def test_process_group_false_keeps_each_rank_to_its_own_batches(ranks):
    model = make_model(0)
    every = make_batches(SIZES)
    v = _probe(N_PARAMS)[:, 0]
    for r in (0, 1):
        own = Hessian(model, cross_entropy(), [every[i] for i in SHARDS[r]]) @ v
        torch.testing.assert_close(ranks[r]["local"]["Hv"], own, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ranks[r]["local"]["Hv_ctx"], own, rtol=1e-12, atol=1e-14)


def test_bad_process_group_is_refused():
    model = make_model(0)
    with pytest.raises(CurvatureError, match="process_group must be None .* False .* or a torch.distributed"):
        Hessian(model, cross_entropy(), make_batches([3]), process_group="world")
    with pytest.raises(CurvatureError, match="process_group must be"):
        gradient(model, cross_entropy(), make_batches([3]), process_group=True)


def test_the_removed_default_process_group_says_what_to_pass_instead():
    from landscape.curvature import default_process_group

    with pytest.raises(CurvatureError, match=r"was removed: pass process_group=False .* Hessian\(model"):
        default_process_group(False)


# ----------------------------------------------------------------------------- failures


class _FailsOnRank1:
    def __init__(self, rank):
        self.rank, self.inner = rank, cross_entropy()

    def __call__(self, model, batch):
        if self.rank == 1:
            raise ValueError("boom on purpose")
        return self.inner(model, batch)


def _failures(rank, world, out):
    model = make_model(0)
    mine = [make_batches(SIZES)[i] for i in SHARDS[rank]]
    msgs = {}
    # 1. a rank raises inside a product: every rank raises at once, naming it
    H = Hessian(model, _FailsOnRank1(rank), mine)
    try:
        H @ _probe(N_PARAMS)[:, 0]
    except CurvatureError as exc:
        msgs["product"] = f"{type(exc).__name__}: {exc}"
    # 2. a loader that reshuffles on one rank: its determinism check fails there, every rank stops
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.cat([b[0] for b in mine])
    y = torch.cat([b[1] for b in mine])
    loader = DataLoader(TensorDataset(x, y), batch_size=3, shuffle=rank == 1,
                        generator=torch.Generator().manual_seed(0))
    H = Hessian(model, cross_entropy(), loader, cache_graph=False)
    H @ _probe(N_PARAMS)[:, 0]
    try:
        H @ _probe(N_PARAMS)[:, 0]
    except CurvatureError as exc:
        msgs["shuffled"] = f"{type(exc).__name__}: {exc}"
    # 3. a rank fails outside any reduction and never comes: the others hear of it by the timeout
    t0 = time.monotonic()
    if rank == 1:
        time.sleep(6.0)  # alive but elsewhere (e.g. stuck in its own error handling)
    else:
        try:
            mean_loss(model, cross_entropy(), mine)
        except CurvatureError as exc:
            msgs["timeout"] = f"{type(exc).__name__}: {exc}"
        msgs["waited"] = time.monotonic() - t0
    torch.save(msgs, out / f"fail{rank}.pt")


def test_a_failing_rank_stops_every_rank_with_a_clear_error(tmp_path):
    run_ranks(_failures, 2, tmp_path, timeout=3.0)
    r0, r1 = (torch.load(tmp_path / f"fail{r}.pt") for r in range(2))
    assert r1["product"].startswith("CurvatureError: loss_fn raised on batch 0: ValueError: boom on purpose")
    assert r0["product"].startswith("ReductionError: rank 0 of 2: a hessian product stopped because rank 1: "
                                    "CurvatureError: loss_fn raised on batch 0: ValueError: boom on purpose")
    assert r1["shuffled"].startswith("CurvatureError: the batches changed between two passes")
    assert r0["shuffled"].startswith("ReductionError: rank 0 of 2: a hessian product stopped because rank 1: "
                                     "CurvatureError: the batches changed between two passes")
    assert "ReductionError: rank 0 of 2: the all-reduce of a mean loss failed: another rank stopped or did not " \
           "reach it within the process group's timeout" in r0["timeout"]
    assert r0["waited"] < 6.0  # the timeout (3 s) ended the wait, not rank 1's return
