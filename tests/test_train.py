"""The trainer end to end on digits: run folders, checkpoints, exact resume after a kill,
skipping complete runs, NaN stops, and config clashes."""

import copy
import json
import shutil

import pandas as pd
import pytest
import torch

from landscape.checkpoints import (analysis_batches, config_hash, content_hash, list_checkpoints,
                                   load_checkpoint, rebuild_student,
                                   rebuild_teacher)
from landscape.config import RecipeError
from landscape.models import evaluate
from landscape.quant import check_dequantization, integer_codes
from landscape.zsq import tables
from landscape.zsq.generator import rebuild_generator
from landscape.zsq.runs import train_recipe
from landscape.zsq.trainer import TrainingError

from tiny_runs import recipe  # noqa: F401 - the shared fixture


@pytest.fixture(scope="module")
def trained(digits_tiny, recipe):
    """The session's digits_tiny root (read-only: tests that train into it must not change a byte)
    and its run folders by name, in recipe order."""
    return digits_tiny, {name: digits_tiny / "digits_tiny" / f"{name}-seed0" for name in recipe["runs"]}


def test_run_folders_follow_the_layout(trained, recipe):
    out, dirs = trained
    assert list(dirs) == ["ptq", "kd", "gdfq", "kl", "ait"]
    for name, d in dirs.items():
        assert d == out / "digits_tiny" / f"{name}-seed0"
        assert (d / "config.json").is_file()
        epochs = [e for e, _ in list_checkpoints(d)]
        assert epochs == ([0] if name == "ptq" else [1, 2, 3])
        metrics = pd.read_csv(d / "metrics.csv")
        assert list(metrics.columns) == tables.METRICS_COLUMNS and metrics.epoch.tolist() == epochs
        assert metrics.best_acc.tolist() == metrics.test_acc.cummax().tolist()  # best so far
        crossings = pd.read_csv(d / "crossings.csv")
        assert list(crossings.columns) == tables.CROSSING_COLUMNS
        assert not list(d.glob("*.tmp"))
    # warm-up epoch 1: no student step, so no crossing rows; then 4 layers x 4 steps per epoch
    for name in ("kd", "gdfq", "kl", "ait"):
        c = pd.read_csv(dirs[name] / "crossings.csv")
        assert sorted(c.epoch.unique()) == [2, 3] and len(c) == 2 * 4 * 4
        m = pd.read_csv(dirs[name] / "metrics.csv")
        assert m.phase.tolist() == ["warmup", "train", "train"]
    assert (pd.read_csv(dirs["kl"] / "crossings.csv").kappa == 1).all()
    assert (pd.read_csv(dirs["ait"] / "crossings.csv").kappa >= 1).all()


def test_checkpoint_rebuilds_student_teacher_and_batches(trained):
    out, dirs = trained
    for name, d in dirs.items():
        epoch, path = list_checkpoints(d)[-1]
        ckpt = load_checkpoint(path)
        assert ckpt["run"] == name and ckpt["epoch"] == epoch and ckpt["recipe"] == "digits_tiny"
        student, teacher = rebuild_student(ckpt), rebuild_teacher(ckpt)
        assert not student.training and not teacher.training
        check_dequantization(student)
        from landscape.data import load_dataset
        data = load_dataset("digits")
        assert evaluate(student, data.x_test, data.y_test) == pytest.approx(ckpt["metrics"]["test_acc"])
        assert evaluate(teacher, data.x_test, data.y_test) == pytest.approx(ckpt["teacher"]["test_acc"])
        batches = analysis_batches(ckpt)
        assert len(batches) == 2 and all(x.shape == (16, 1, 8, 8) and y.shape == (16,) for x, y in batches)
        assert (rebuild_generator(ckpt) is None) == (name in ("ptq", "kd"))
        if name not in ("ptq", "kd"):
            x, y = rebuild_generator(ckpt).sample(3)
            assert x.shape == (3, 1, 8, 8)
        assert ckpt["kl_reduction"] == "batchmean" and ckpt["temperature"] == 20.0
        assert set(integer_codes(student)) == {"features.0.0", "features.1.0", "features.2.0", "fc"}
        assert ckpt["threads"] == 1 and "seconds" not in ckpt["metrics"]
        assert ckpt["recipe_hash"] == config_hash(json.loads((d / "config.json").read_text()))
        assert ckpt["content_hash"] == content_hash(ckpt)
        assert ckpt["quant"]["weight_zero_point"] == "integral"  # the official grid, recorded
        grad = ckpt["epoch_grad"]
        if name == "ptq":
            assert grad is None
        else:
            names = [n for n, p in student.named_parameters()]
            assert grad["names"] == names and grad["n_steps"] == 4
            assert grad["mean"].dtype == torch.float32
            assert grad["mean"].shape == (sum(p.numel() for p in student.parameters()),)
            assert load_checkpoint(d / "epoch_0001.pt")["epoch_grad"] is None  # warm-up


def test_complete_runs_are_skipped(trained, recipe):
    out, dirs = trained
    stamps = {d: [p.stat().st_mtime_ns for _, p in list_checkpoints(d)] for d in dirs.values()}

    def boom(*args):
        raise AssertionError("a complete run trained again")

    train_recipe(recipe, out=out, device="cpu", progress=False, step_hook=boom)
    assert stamps == {d: [p.stat().st_mtime_ns for _, p in list_checkpoints(d)] for d in dirs.values()}


def test_killed_run_resumes_to_identical_weights(trained, recipe, tmp_path):
    out, dirs = trained
    # the same recipe in a fresh folder, killed in the middle of epoch 2 of gdfq and ait
    # (and, for kd, at the last step of epoch 3, right before its checkpoint)
    kills = {("gdfq", 2, 2), ("ait", 2, 3), ("kd", 3, 4)}

    def kill(run, epoch, step):
        if (run, epoch, step) in kills:
            kills.discard((run, epoch, step))
            raise KeyboardInterrupt

    resumed = tmp_path / "ck"
    shutil.copytree(out / "teachers", resumed / "teachers")  # same teacher file (and hash)
    for _ in range(4):
        try:
            train_recipe(recipe, runs=["kd", "gdfq", "ait"], out=resumed, device="cpu",
                         progress=False, step_hook=kill)
            break
        except KeyboardInterrupt:
            continue
    assert not kills
    for name in ("kd", "gdfq", "ait"):
        for (ea, pa), (eb, pb) in zip(list_checkpoints(dirs[name]),
                                      list_checkpoints(resumed / "digits_tiny" / f"{name}-seed0")):
            assert ea == eb and pa.read_bytes() == pb.read_bytes(), (name, ea)  # byte-identical
        a = load_checkpoint(list_checkpoints(dirs[name])[-1][1])
        b = load_checkpoint(list_checkpoints(resumed / "digits_tiny" / f"{name}-seed0")[-1][1])
        for key in ("student_state", "generator_state"):
            if a[key] is None:
                continue
            for k in a[key]:
                assert torch.equal(a[key][k], b[key][k]), (name, key, k)
        for x, y in zip(a["analysis_batches"], b["analysis_batches"]):
            assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
        ma = pd.read_csv(dirs[name] / "metrics.csv").drop(columns="seconds")
        mb = pd.read_csv(resumed / "digits_tiny" / f"{name}-seed0" / "metrics.csv").drop(columns="seconds")
        pd.testing.assert_frame_equal(ma, mb)  # no duplicated or missing rows after resume
        ca = (dirs[name] / "crossings.csv").read_bytes()
        assert ca == (resumed / "digits_tiny" / f"{name}-seed0" / "crossings.csv").read_bytes()


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(trained, recipe, tmp_path,
                                                                          monkeypatch):
    from landscape.zsq import trainer

    shutil.copytree(trained[0] / "teachers", tmp_path / "teachers")  # reuse the cached teacher

    real_kl, calls = trainer.kl_divergence, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real_kl(*args, **kwargs)
        return out * float("nan") if calls["n"] == 10 else out  # epoch 3, step 2 (4 steps/epoch)

    monkeypatch.setattr(trainer, "kl_divergence", poisoned)
    with pytest.raises(TrainingError, match=r"student loss is nan at epoch 3, step 10.*epoch_0002\.pt"):
        train_recipe(recipe, runs=["kl"], out=tmp_path, device="cpu", progress=False)
    run_dir = tmp_path / "digits_tiny" / "kl-seed0"
    assert [e for e, _ in list_checkpoints(run_dir)] == [1, 2]
    load_checkpoint(run_dir / "epoch_0002.pt")
    monkeypatch.setattr(trainer, "kl_divergence", real_kl)
    train_recipe(recipe, runs=["kl"], out=tmp_path, device="cpu", progress=False)  # resumes
    assert pd.read_csv(run_dir / "metrics.csv").epoch.tolist() == [1, 2, 3]


def test_a_folder_from_another_config_is_never_overwritten(trained, recipe):
    out, dirs = trained
    changed = copy.deepcopy(recipe)
    changed["runs"]["kd"]["lr"] = 0.5
    with pytest.raises(RecipeError, match=r"different configuration \(train.lr: 0.001 -> 0.5\)"):
        train_recipe(changed, runs=["kd"], out=out, device="cpu", progress=False)


def test_more_epochs_extend_a_finished_run(trained, recipe, tmp_path):
    out, dirs = trained
    shutil.copytree(out, tmp_path / "ck")
    train_recipe(recipe, runs=["kl"], epochs=4, out=tmp_path / "ck", device="cpu", progress=False)
    run_dir = tmp_path / "ck" / "digits_tiny" / "kl-seed0"
    assert [e for e, _ in list_checkpoints(run_dir)] == [1, 2, 3, 4]


def test_bad_train_arguments(recipe, tmp_path):
    with pytest.raises(RecipeError, match="no run 'aitt'; did you mean 'ait'"):
        train_recipe(recipe, runs=["aitt"], out=tmp_path, progress=False)
    with pytest.raises(RecipeError, match="warmup_epochs"):
        train_recipe(recipe, runs=["kd"], epochs=1, out=tmp_path, progress=False)


def test_epoch_grad_is_the_mean_of_the_raw_step_gradients(trained, recipe, tmp_path, monkeypatch):
    """ckpt["epoch_grad"] against gradients recorded by hand at every optimizer step of an
    AIT run (before GI's κ, weight decay and momentum), summed in float64."""
    from landscape.zsq import trainer
    from landscape.zsq.gi import InundatedSGD

    shutil.copytree(trained[0] / "teachers", tmp_path / "teachers")
    runs, pending, per_epoch = [], [], {}
    real_fit, real_step = trainer.Run.fit, InundatedSGD.step

    def fit(self, *args, **kwargs):
        runs.append(self)
        return real_fit(self, *args, **kwargs)

    def step(self, closure=None):
        student = runs[-1].student
        pending.append(torch.cat([p.grad.detach().double().reshape(-1) for p in student.parameters()]))
        return real_step(self, closure)

    def hook(run, epoch, i):
        if pending:  # warm-up steps take no optimizer step
            per_epoch.setdefault(epoch, []).extend(pending)
            pending.clear()

    monkeypatch.setattr(trainer.Run, "fit", fit)
    monkeypatch.setattr(InundatedSGD, "step", step)
    changed = copy.deepcopy(recipe)
    changed["runs"]["ait"]["weight_decay"] = 1e-2  # so that "before weight decay" is tested
    run_dir = train_recipe(changed, runs=["ait"], out=tmp_path, device="cpu", progress=False,
                           step_hook=hook)[0]
    assert sorted(per_epoch) == [2, 3] and all(len(v) == 4 for v in per_epoch.values())
    for epoch, grads in per_epoch.items():
        saved = load_checkpoint(run_dir / f"epoch_{epoch:04d}.pt")["epoch_grad"]
        hand = torch.stack(grads).sum(0) / len(grads)
        assert saved["n_steps"] == 4
        torch.testing.assert_close(saved["mean"].double(), hand, rtol=1e-6, atol=1e-9)
    assert not torch.equal(per_epoch[2][0], per_epoch[2][1])  # real, changing gradients
    kappas = pd.read_csv(run_dir / "crossings.csv").kappa
    assert (kappas > 1).any()  # GI scaled steps, and the stored gradients do not carry κ


def test_threads_are_set_for_the_call_and_restored(trained, recipe, tmp_path):
    shutil.copytree(trained[0] / "teachers", tmp_path / "teachers")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's count differs from the recipe's (1)
    seen = set()
    try:
        train_recipe(recipe, runs=["kd"], out=tmp_path, device="cpu", progress=False,
                     step_hook=lambda *a: seen.add(torch.get_num_threads()))
        assert seen == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    config = json.loads((tmp_path / "digits_tiny" / "kd-seed0" / "config.json").read_text())
    assert config["threads"] == 1
    with pytest.raises(RecipeError, match=r"different configuration \(threads: 1 -> 2\)"):
        train_recipe(recipe, runs=["kd"], out=tmp_path, device="cpu", progress=False, threads=2)
