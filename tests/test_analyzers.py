"""Analyzers on a tiny real run (sklearn digits, two epochs) against direct computations."""

from __future__ import annotations

import math
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from landscape.analyzers import (ANALYSES, COLUMNS, AnalysisError, AnalysisWarning, analyze_runs,
                                 run_identity)

#: Cheap but complete: every analysis at every epoch.
SETTINGS = {
    "max_batches": 2,
    "trace": {"max_matvecs": 20, "rtol": None},
    "eigen": {"epochs": "all", "n_points": 5, "max_iter": 20},
    "density": {"n_runs": 1, "n_steps": 10, "grid_points": 50},
}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Three two-epoch runs on digits (kd real, gdfq CE+KL synthetic, ait KL+GI), trained once."""
    from landscape.zsq.runs import train_recipe

    from tiny_runs import tiny_pipeline

    root = tmp_path_factory.mktemp("tiny")
    recipe = tiny_pipeline()
    recipe["train"].update(iters_per_epoch=4, analysis_batches=2)  # two batches for max_batches=2
    torch.manual_seed(0)
    dirs = train_recipe(recipe, runs=["kd", "gdfq", "ait"], out=root / "checkpoints", device="cpu", progress=False)
    return {run_identity(d)["run"]: d for d in dirs}


@pytest.fixture(scope="session")
def analyzed(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    tables = analyze_runs(list(tiny_runs.values()), settings=SETTINGS, out_dir=out, device="cpu")
    return tables, out


def _point(run_dir, epoch, max_batches=2):
    """Student, teacher, batches and losses of one checkpoint, rebuilt by hand."""
    from landscape import losses
    from landscape.checkpoints import (analysis_batches, list_checkpoints, load_checkpoint,
                                       rebuild_student, rebuild_teacher)

    path = dict(list_checkpoints(run_dir))[epoch]
    ckpt = load_checkpoint(path)
    student = rebuild_student(ckpt).eval()
    teacher = rebuild_teacher(ckpt).eval()
    batches = analysis_batches(ckpt)[:max_batches]
    kl = losses.kl_to_teacher(teacher, ckpt["temperature"], ckpt["kl_reduction"])
    return student, batches, {"ce": losses.cross_entropy(), "kl": kl}


def _hand_gradient(model, loss_fn, batches):
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    n = 0
    for x, y in batches:
        grads = torch.autograd.grad(loss_fn(model, (x, y)), params, allow_unused=True)
        for t, g in zip(total, grads):
            if g is not None:
                t += len(x) * g
        n += len(x)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return {name: t / n for name, t in zip(names, total)}


def test_every_table_has_the_documented_columns(analyzed):
    tables, out = analyzed
    assert set(ANALYSES) <= set(tables)
    for name in ANALYSES:
        df = tables[name]
        assert list(df.columns[: len(COLUMNS)]) == COLUMNS, name
        assert len(df) > 0, name
        on_disk = pd.read_csv(out / f"{name}.csv")
        assert len(on_disk) == len(df)
    assert "k" in tables["eigen"] and "x" in tables["density"] and "prev_epoch" in tables["interepoch"]
    assert set(tables["trace"]["loss"]) == {"ce", "kl"}
    tr = tables["trace"][tables["trace"]["metric"] == "trace"]
    assert (tr["n_matvecs"] > 0).all() and tr["stderr"].notna().all() and tr["converged"].notna().all()
    assert set(tables["trace"]["metric"]) == {"trace", "loss_value"}
    assert set(tables["training"]["metric"]) >= {"test_acc"}
    # seeds and runs come from the run folders
    assert set(tables["cosine"]["run"]) == {"kd", "gdfq", "ait"} and set(tables["cosine"]["seed"]) == {0}


def test_cosine_equals_the_one_computed_by_hand(analyzed, tiny_runs):
    tables, _ = analyzed
    student, batches, losses = _point(tiny_runs["gdfq"], 2)
    g_ce = _hand_gradient(student, losses["ce"], batches)
    g_kl = _hand_gradient(student, losses["kl"], batches)
    a = torch.cat([g.flatten() for g in g_ce.values()]).double()
    b = torch.cat([g.flatten() for g in g_kl.values()]).double()
    expected = float(a @ b / (a.norm() * b.norm()))
    df = tables["cosine"]
    row = df[(df.run == "gdfq") & (df.epoch == 2) & (df.layer == "all") & (df.metric == "cosine")]
    assert row["value"].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # one layer: the cosine of that layer's parameters only
    layer = "fc"
    a = torch.cat([g.flatten() for n, g in g_ce.items() if n.rsplit(".", 1)[0] == layer]).double()
    b = torch.cat([g.flatten() for n, g in g_kl.items() if n.rsplit(".", 1)[0] == layer]).double()
    row = df[(df.run == "gdfq") & (df.epoch == 2) & (df.layer == layer) & (df.metric == "cosine")]
    assert row["value"].item() == pytest.approx(float(a @ b / (a.norm() * b.norm())), rel=1e-4, abs=1e-6)


def test_interepoch_cosines_equal_hand_computations(analyzed, tiny_runs):
    """The paper's metric from the checkpoints' epoch-mean gradients; the fixed-batch variant from
    two hand gradients of the KL on epoch 2's batches (epoch-1 weights vs epoch-2 weights)."""
    from landscape.checkpoints import list_checkpoints, load_checkpoint

    tables, _ = analyzed
    df = tables["interepoch"]
    paths = dict(list_checkpoints(tiny_runs["ait"]))
    means = [torch.as_tensor(load_checkpoint(paths[e])["epoch_grad"]["mean"]).double() for e in (1, 2)]
    expected = float(means[0] @ means[1] / (means[0].norm() * means[1].norm()))
    row = df[(df.run == "ait") & (df.epoch == 2) & (df.layer == "all") & (df.metric == "interepoch_cosine")]
    assert row["value"].item() == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert row["prev_epoch"].item() == 1 and row["loss"].item() == "train"
    s1, _, _ = _point(tiny_runs["ait"], 1)
    s2, batches2, losses2 = _point(tiny_runs["ait"], 2)
    g = [torch.cat([t.flatten() for t in _hand_gradient(m, losses2["kl"], batches2).values()]).double()
         for m in (s1, s2)]
    expected = float(g[0] @ g[1] / (g[0].norm() * g[1].norm()))
    row = df[(df.run == "ait") & (df.epoch == 2) & (df.layer == "all") &
             (df.metric == "interepoch_cosine_fixed_batches")]
    assert row["value"].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_crossings_equal_a_count_of_changed_integer_codes(analyzed, tiny_runs):
    from landscape.quant import integer_codes

    tables, _ = analyzed
    codes = [integer_codes(_point(tiny_runs["ait"], e)[0]) for e in (1, 2)]
    df = tables["crossings"]
    df = df[(df.run == "ait") & (df.epoch == 2)]
    total = 0
    for layer, q in codes[1].items():
        changed = int((q != codes[0][layer]).sum())
        total += changed
        got = df[(df.layer == layer) & (df.metric == "codes_changed")]["value"].item()
        assert got == changed
        frac = df[(df.layer == layer) & (df.metric == "code_change_fraction")]["value"].item()
        assert frac == pytest.approx(changed / q.numel())
    assert df[(df.layer == "all") & (df.metric == "codes_changed")]["value"].item() == total
    # and the per-step view is the trainer's log, averaged over the epoch's steps
    log = pd.read_csv(tiny_runs["ait"] / "crossings.csv")
    want = log[log.epoch == 2].groupby("layer")["crossing_fraction"].mean()
    step = df[df.metric == "step_crossing_fraction"].set_index("layer")["value"]
    for layer, v in want.items():
        assert step[layer] == pytest.approx(v)


def test_eigen_slice_and_density_rows(analyzed):
    tables, _ = analyzed
    eg = tables["eigen"]
    sl = eg[(eg.metric == "slice_loss") & (eg.run == "gdfq") & (eg.epoch == 2) & (eg.loss == "ce")]
    assert set(sl["slice"]) == {"requantized", "frozen", "requantized_unit"}
    for kind, part in sl.groupby("slice"):
        assert sorted(part["k"]) == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
    at0 = sl[sl.k == 0.0].set_index("slice")["value"]  # every slice passes through L(θ)
    assert at0["frozen"] == pytest.approx(at0["requantized"], rel=1e-6)
    lv = eg[(eg.metric == "loss_value") & (eg.run == "gdfq") & (eg.epoch == 2) & (eg.loss == "ce")]["value"].item()
    assert at0["requantized"] == pytest.approx(lv, rel=1e-6)
    lam = eg[(eg.metric == "top_eigenvalue")]
    assert len(lam) == 3 * 2 * 2 and np.isfinite(lam["value"]).all()
    assert lam["residual"].notna().all() and lam["converged"].notna().all()
    de = tables["density"]
    ritz = de[(de.metric == "ritz") & (de.run == "kd")]
    assert ritz.groupby("loss")["value"].sum().to_numpy() == pytest.approx([1.0, 1.0])
    assert set(de["epoch"]) == {2}  # the density runs at the last epoch by default


def test_cached_second_call_performs_no_hvp(analyzed, tiny_runs, monkeypatch):
    from landscape.curvature import Hessian

    tables, out = analyzed
    calls = {"hvp": 0, "load": 0}
    original = Hessian._apply

    def counting(self, V):
        calls["hvp"] += 1
        return original(self, V)

    def no_load(*a, **k):
        calls["load"] += 1
        raise AssertionError("a cached call must not load a checkpoint")

    monkeypatch.setattr(Hessian, "_apply", counting)
    monkeypatch.setattr("landscape.checkpoints.load_checkpoint", no_load)
    again = analyze_runs(list(tiny_runs.values()), settings=SETTINGS, out_dir=out, device="cpu")
    assert calls == {"hvp": 0, "load": 0}
    for name in ANALYSES:
        pd.testing.assert_frame_equal(again[name].reset_index(drop=True), tables[name].reset_index(drop=True),
                                      check_dtype=False)
    monkeypatch.undo()
    monkeypatch.setattr(Hessian, "_apply", counting)
    analyze_runs([tiny_runs["kd"]], analyses=["trace"], settings=SETTINGS, out_dir=out, device="cpu", force=True)
    assert calls["hvp"] > 0  # --force recomputes


def test_changed_settings_miss_the_cache(analyzed, tiny_runs):
    _, out = analyzed
    s = {**SETTINGS, "trace": {"max_matvecs": 4, "rtol": None}}
    df = analyze_runs([tiny_runs["kd"]], analyses=["trace"], settings=s, out_dir=out, device="cpu")["trace"]
    assert (df[df["metric"] == "trace"]["n_matvecs"] == 4).all()


# ----------------------------------------------------------------------------- bad input


def test_unknown_analysis_names_the_closest(tiny_runs, tmp_path):
    with pytest.raises(AnalysisError, match="did you mean 'trace'"):
        analyze_runs([tiny_runs["kd"]], analyses=["trase"], out_dir=tmp_path)


def test_unknown_setting_names_the_closest(tiny_runs, tmp_path):
    with pytest.raises(AnalysisError, match="max_matvecs"):
        analyze_runs([tiny_runs["kd"]], analyses=["trace"], settings={"trace": {"max_matvec": 3}},
                     out_dir=tmp_path)


def test_missing_run_folder_is_one_clear_error(tmp_path):
    with pytest.raises(AnalysisError, match="does not exist"):
        analyze_runs([tmp_path / "nope"], out_dir=tmp_path)


def _copy_run(src, dst):
    """A copy of a run folder whose relative teacher reference (../../teachers/) still resolves."""
    dst = dst.parent / "ck" / "tiny" / dst.name
    shutil.copytree(src, dst)
    (dst.parent.parent / "teachers").symlink_to(src.parent.parent / "teachers")
    return dst


def test_corrupt_and_missing_epochs_are_skipped_with_a_warning(tiny_runs, tmp_path):
    run = _copy_run(tiny_runs["kd"], tmp_path / "kd-seed0")
    (run / "epoch_0002.pt").write_bytes((run / "epoch_0002.pt").read_bytes()[:500])  # truncated
    with pytest.warns(AnalysisWarning, match="epoch_0002.pt: load"):
        df = analyze_runs([run], analyses=["cosine"], out_dir=tmp_path / "t", device="cpu")["cosine"]
    assert set(df["epoch"]) == {1}
    (run / "epoch_0002.pt").unlink()
    shutil.copyfile(tiny_runs["kd"] / "epoch_0002.pt", run / "epoch_0003.pt")
    (run / "epoch_0001.pt").unlink()  # epochs 1 and 2 now missing; "epoch 3" is epoch 2 renamed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AnalysisError, match="file name says epoch 3"):
            analyze_runs([run], analyses=["cosine"], out_dir=tmp_path / "t", device="cpu")
    assert any(re.search(r"no checkpoint for epoch\(s\) 1, 2", str(w.message)) for w in caught)


def test_nothing_left_stops_with_a_clear_message(tiny_runs, tmp_path):
    run = _copy_run(tiny_runs["kd"], tmp_path / "kd-seed0")
    for p in run.glob("epoch_*.pt"):
        p.write_bytes(b"PK\x03\x04 not really a zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        with pytest.raises(AnalysisError, match="nothing left to analyse"):
            analyze_runs([run], analyses=["trace"], out_dir=tmp_path / "t", device="cpu")


def test_incompatible_version_is_named(tiny_runs, tmp_path):
    run = _copy_run(tiny_runs["kd"], tmp_path / "kd-seed0")
    (run / "epoch_0002.pt").unlink()
    ckpt = torch.load(run / "epoch_0001.pt", weights_only=True)
    ckpt["version"] = 99
    torch.save(ckpt, run / "epoch_0001.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        with pytest.raises(AnalysisError, match="version 99"):
            analyze_runs([run], analyses=["cosine"], out_dir=tmp_path / "t", device="cpu")


def test_epoch_selection():
    from landscape.analyzers._common import select_epochs

    eps = list(range(1, 11))
    assert select_epochs("last", eps) == [10]
    assert select_epochs(4, eps) == [1, 4, 7, 10]
    assert select_epochs([2, 5, 99], eps) == [2, 5]
    with pytest.raises(AnalysisError, match="epochs"):
        select_epochs("sometimes", eps)
    assert math.isnan(run_identity("/nonexistent/foo")["seed"])


# ----------------------------------------------------------------------------- run-folder trust (issue 11)


def test_probes_are_seeded_per_checkpoint_and_shared_by_ce_and_kl(analyzed):
    tables, _ = analyzed
    tr = tables["trace"]
    seeds = tr.groupby(["run", "epoch"])["probe_seed"].agg(["nunique", "first"])
    assert (seeds["nunique"] == 1).all()  # CE and KL at one checkpoint: common random numbers
    assert seeds["first"].nunique() == len(seeds)  # every checkpoint draws its own probes


def test_a_missing_teacher_still_gives_the_ce_and_names_the_kl(tiny_runs, tmp_path):
    run = tmp_path / "ck" / "tiny" / "gdfq-seed0"
    shutil.copytree(tiny_runs["gdfq"], run)  # no teachers/ folder beside it
    with pytest.warns(AnalysisWarning, match="loss 'kl' not analysed"):
        tables = analyze_runs([run], analyses=["trace"], settings=SETTINGS, out_dir=tmp_path / "t", device="cpu")
    assert set(tables["trace"]["loss"]) == {"ce"}
    assert tables.problems and all("teacher" in str(p) for p in tables.problems)


def test_a_checkpoint_copied_from_another_run_is_refused_even_from_the_cache(tiny_runs, tmp_path):
    run = _copy_run(tiny_runs["kd"], tmp_path / "kd-seed0")
    out = tmp_path / "t"
    analyze_runs([run], analyses=["cosine"], out_dir=out, device="cpu")  # fills the cache
    shutil.copyfile(tiny_runs["gdfq"] / "epoch_0001.pt", run / "epoch_0001.pt")
    with pytest.warns(AnalysisWarning, match="epoch_0001.pt: load"):
        tables = analyze_runs([run], analyses=["cosine"], out_dir=out, device="cpu")
    assert set(tables["cosine"]["epoch"]) == {2} and tables.problems


def test_a_junk_log_is_named_and_the_checkpoints_still_analysed(tiny_runs, tmp_path):
    run = _copy_run(tiny_runs["kd"], tmp_path / "kd-seed0")
    (run / "metrics.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.warns(AnalysisWarning, match="metrics.csv"):
        tables = analyze_runs([run], analyses=["cosine"], out_dir=tmp_path / "t", device="cpu")
    assert set(tables["cosine"]["epoch"]) == {1, 2}
    assert any("metrics.csv" in str(p) for p in tables.problems)


def _cli(*args, cwd):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "landscape", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_exit_code_3_when_something_was_skipped_and_0_with_keep_going(tiny_runs, tmp_path):
    run = tmp_path / "ck" / "tiny" / "gdfq-seed0"
    shutil.copytree(tiny_runs["gdfq"], run)  # its teacher is missing: the KL cannot be analysed
    args = ["analyze", run, "--analyses", "cosine", "--out", tmp_path / "t"]
    p = _cli(*args, cwd=tmp_path)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 3, err
    assert "could not be analysed" in err and "teacher" in err
    p = _cli(*args, "--keep-going", cwd=tmp_path)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err


def test_two_analyses_of_the_same_folder_do_the_work_once(tiny_runs, tmp_path):
    run = _copy_run(tiny_runs["kd"], tmp_path / "kd-seed0")
    args = ["analyze", run, "--analyses", "trace", "cosine", "--out", tmp_path / "t"]
    procs = [_cli(*args, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    computed = [int(re.search(r"(\d+) result\(s\) computed", o).group(1)) for o, _ in outs]
    assert sum(computed) == 4  # 2 analyses × 2 epochs, each computed by one process only
    a, b = (pd.read_csv(tmp_path / "t" / "trace.csv") for _ in range(2))
    pd.testing.assert_frame_equal(a, b)


def test_off_a_terminal_each_checkpoint_prints_one_line(tiny_runs, tmp_path, capsys):
    """In a log or CI (no TTY: pytest captures stderr) tqdm is silent, so the analysis says one
    line per analysed checkpoint instead of nothing for minutes."""
    from landscape.checkpoints import list_checkpoints

    analyze_runs([tiny_runs["kd"]], analyses=["cosine"], settings=SETTINGS, out_dir=tmp_path, device="cpu")
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("analyze ")]
    n = len(list_checkpoints(tiny_runs["kd"]))
    assert len(lines) == n
    assert all("cosine" in l for l in lines) and lines[-1].split("(")[1].startswith(f"{n}/{n}")


def test_a_state_that_fails_on_bad_input_is_listed_and_a_bug_is_raised(tiny_runs, tmp_path, monkeypatch):
    """A checkpoint's state (what crossings compares between epochs) that meets bad input (a
    LandscapeError) is a problem of that checkpoint and the sweep goes on; any other exception is a
    bug in landscape and is raised, as for the analyses themselves."""
    import landscape.analyzers.crossings as crossings
    from landscape.curvature import CurvatureError

    state = crossings.state

    def bad_at_epoch_2(point, cfg):
        if point.meta["epoch"] == 2:
            raise CurvatureError("planted: epoch 2's state")
        return state(point, cfg)

    monkeypatch.setattr(crossings, "state", bad_at_epoch_2)
    with pytest.warns(AnalysisWarning, match="epoch_0002.pt: crossings: CurvatureError: planted"):
        tables = analyze_runs([tiny_runs["kd"]], analyses=["crossings"], out_dir=tmp_path / "a", device="cpu")
    assert any("planted" in str(p) for p in tables.problems)

    def buggy(point, cfg):
        raise KeyError("a bug in landscape")

    monkeypatch.setattr(crossings, "state", buggy)
    with pytest.raises(KeyError, match="a bug in landscape"):
        analyze_runs([tiny_runs["kd"]], analyses=["crossings"], out_dir=tmp_path / "b", device="cpu")
