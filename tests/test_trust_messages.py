"""The silent cases of issue 19 §8 are refused or said, and the messages of §9 name the flag,
key or file and the fix (one line each)."""

import errno
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from landscape import cli
from landscape.analyzers import analyze_runs
from landscape.analyzers._common import AnalysisError
from landscape.analyzers.settings import resolve_settings
from landscape.checkpoints import (CheckpointMismatch, list_checkpoints, load_checkpoint, load_teacher_file,
                                   save_atomic, seal)
from landscape.config import check_overrides, load_recipe, validate_recipe
from landscape.pretrained import load_state_dict_file
from landscape.schema import RecipeError
from tiny_runs import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def kd(tiny_kd, tmp_path):
    shutil.copytree(tiny_kd, tmp_path / "ck")
    return tmp_path / "ck" / "digits_tiny" / "kd-seed0"


def _run(**train):
    return {"runs": {"kd": {"source": "real", **train}}}


# ----------------------------------------------------------------------------- §8: silent cases

@pytest.mark.parametrize("settings, match", [
    ({"interepoch": {"loss": "foo"}}, r"\[analysis.interepoch\] loss = 'foo' is not one of ce, kl"),
    ({"losses": ["foo"]}, r"\[analysis\] losses = \['foo'\]; expected a non-empty list from 'ce', 'kl'"),
    ({"eigen": {"k_max": float("inf")}}, r"\[analysis.eigen\] k_max = inf; expected a finite number"),
])
def test_analysis_settings_that_dropped_rows_or_failed_late_are_refused(settings, match):
    with pytest.raises(AnalysisError, match=match):
        resolve_settings(settings)


def test_an_analysis_batch_larger_than_the_training_batch_is_refused():
    with pytest.raises(RecipeError, match=r"\[runs.kd\]: analysis_batch_size \(100000\) is larger than "
                                          r"batch_size \(32\)"):
        validate_recipe(_run(batch_size=32, analysis_batch_size=100000), "r.toml")
    with pytest.raises(RecipeError, match=r"analysis_batches \(5\) is larger than iters_per_epoch \(4\)"):
        validate_recipe(_run(iters_per_epoch=4, analysis_batches=5), "r.toml")
    for recipe in ("default", "digits_tiny", "cifar10_resnet20_w4a4"):  # the shipped recipes pass
        load_recipe(ROOT / "analyses" / f"{recipe}.toml")


def test_a_student_without_a_loss_is_refused():
    with pytest.raises(RecipeError, match=r"ce_scale = kd_scale = 0 gives the student no loss"):
        validate_recipe(_run(ce_scale=0.0, kd_scale=0.0), "r.toml")
    validate_recipe({"runs": {"ptq": {"source": "none", "ce_scale": 0.0, "kd_scale": 0.0}}}, "r.toml")


def test_a_duplicate_checkpoint_under_another_name_is_said(kd):
    shutil.copy(kd / "epoch_0002.pt", kd / "epoch_00002.pt")
    with pytest.warns(UserWarning, match=r"epoch_00002.pt is not a name landscape writes \(epoch 2 is "
                                         r"epoch_0002.pt\); ignored"):
        found = list_checkpoints(kd)
    assert [p.name for _, p in found] == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]


# ----------------------------------------------------------------------------- §9: messages

def test_a_seed_beyond_64_bits_names_the_flag(capsys):
    with pytest.raises(RecipeError, match=r"--seed = 18446744073709551616 is out of range; expected an "
                                          r"integer from 0 to 9223372036854775807"):
        check_overrides(seed=2**64)
    assert cli.main(["train", str(TINY), "--seed", str(2**64)]) == 2
    assert "--seed = 18446744073709551616 is out of range" in capsys.readouterr().err


def test_a_huge_batch_is_refused_in_the_schema():
    with pytest.raises(RecipeError, match=r"\[train\] batch_size = 1000000000000 is out of range; expected an "
                                          r"integer from 1 to 1048576"):
        validate_recipe({"train": {"batch_size": 10**12}, **_run()}, "r.toml")


def test_a_folder_given_as_the_recipe(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe .* is a folder, not a recipe file"):
        load_recipe(tmp_path)


def test_analyze_threads_zero_names_the_flag(kd, tmp_path):
    with pytest.raises(AnalysisError, match=r"--threads = 0 is out of range; expected an integer from 1"):
        analyze_runs([kd], ["crossings"], out_dir=tmp_path / "t", threads=0, progress=False)


def test_a_teacher_with_nan_weights_names_the_teacher_file(kd, tmp_path):
    path = next((kd.parents[1] / "teachers").glob("*.pt"))
    tfile = load_teacher_file(path)
    key = next(iter(tfile["state_dict"]))
    tfile["state_dict"][key] = torch.full_like(tfile["state_dict"][key], float("nan"))
    save_atomic(seal(tfile), path)  # sealed: only the values are wrong
    with pytest.raises(CheckpointMismatch, match=rf"teacher {path} has NaN or inf weights \({key}\).*delete it"):
        load_teacher_file(path)
    weights = tmp_path / "w.pt"
    torch.save(tfile["state_dict"], weights)
    spec = load_checkpoint(kd / "epoch_0001.pt")["model_spec"]
    with pytest.raises(RecipeError, match=rf"\[teacher\] weights = .*w.pt'.*: {key} holds NaN or inf"):
        load_state_dict_file(weights, spec)


def test_a_full_disk_during_analyze_names_the_out_folder(kd, tmp_path, monkeypatch, capsys):
    import landscape.analyzers.runner as runner

    def full(df, path):
        raise OSError(errno.ENOSPC, "No space left on device")  # no file name, as pandas raises it

    monkeypatch.setattr(runner, "write_csv", full)
    out = tmp_path / "t"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["analyze", str(kd), "--analyses", "crossings", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write {out} (No space left on device); the disk is full" in err
