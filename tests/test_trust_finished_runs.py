"""`landscape train` on a run that looks finished checks every checkpoint, not only the last
(issue 11 §2): a corrupt middle checkpoint is refilled as a deleted one is, byte-identically;
a sound checkpoint of another run in the middle is refused naming the file."""

import shutil
import warnings

import pandas as pd
import pytest
import torch

from landscape.checkpoints import CheckpointMismatch, list_checkpoints, load_checkpoint
from tiny_runs import recipe, train_tiny  # noqa: F401 - the shared fixture


@pytest.fixture(scope="module")
def trained(digits_tiny):
    """The session's digits_tiny root (all five runs and the teacher; read-only: copy it to change it)."""
    return digits_tiny


def _never(*args):
    raise AssertionError("trained although it should not have")


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_without_sealing(path):
    """Weights changed and saved with torch.save, the stored content hash left as it was."""
    ckpt = torch.load(path, weights_only=True)
    ckpt["student_state"]["fc.weight"] = ckpt["student_state"]["fc.weight"] * 1.5
    torch.save(ckpt, path)


@pytest.mark.parametrize("damage", [_flip_bytes, _edit_without_sealing])
def test_a_corrupt_middle_checkpoint_of_a_finished_run_is_refilled(trained, recipe, tmp_path, damage):
    shutil.copytree(trained, tmp_path / "ck")
    kl, ref = tmp_path / "ck" / "digits_tiny" / "kl-seed0", trained / "digits_tiny" / "kl-seed0"
    damage(kl / "epoch_0002.pt")
    assert (kl / "epoch_0002.pt").read_bytes() != (ref / "epoch_0002.pt").read_bytes()
    load_checkpoint(kl / "epoch_0003.pt")  # the last one is sound: only the middle is bad
    steps = []
    with pytest.warns(UserWarning, match=r"kl-seed0/epoch_0002.pt is (truncated or )?corrupt.*training "
                                         r"resumes after epoch 1 and rewrites the later epochs"):
        train_tiny(recipe, tmp_path / "ck", ["kl"], step_hook=lambda run, epoch, step: steps.append(epoch))
    assert sorted(set(steps)) == [2, 3]  # retrained from the last good epoch
    for e in (1, 2, 3):
        assert (kl / f"epoch_000{e}.pt").read_bytes() == (ref / f"epoch_000{e}.pt").read_bytes(), e
    assert (kl / "crossings.csv").read_bytes() == (ref / "crossings.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(kl / "metrics.csv").drop(columns="seconds"),
                                  pd.read_csv(ref / "metrics.csv").drop(columns="seconds"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # now finished and sound: nothing to say, nothing to do
        train_tiny(recipe, tmp_path / "ck", ["kl"], step_hook=_never)


def test_a_foreign_middle_checkpoint_of_a_finished_run_is_refused_naming_it(trained, recipe, tmp_path):
    shutil.copytree(trained, tmp_path / "ck")
    kd, kl = (tmp_path / "ck" / "digits_tiny" / f"{r}-seed0" for r in ("kd", "kl"))
    shutil.copy(kd / "epoch_0002.pt", kl / "epoch_0002.pt")  # sound, sealed, but kd's
    before = {p.name: p.read_bytes() for _, p in list_checkpoints(kl)}
    with pytest.raises(CheckpointMismatch, match=rf"{kl / 'epoch_0002.pt'} is a checkpoint of run 'kd' seed 0, "
                                                 r"but it sits in the folder of run 'kl' seed 0"):
        train_tiny(recipe, tmp_path / "ck", ["kl"], step_hook=_never)
    assert {p.name: p.read_bytes() for _, p in list_checkpoints(kl)} == before  # nothing rewritten
