"""Checkpoint files: atomic writes and one clear error for each kind of bad file."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from landscape.checkpoints import (FORMAT, VERSION, CheckpointError, list_checkpoints,
                                   load_checkpoint, rebuild_teacher, save_atomic, sha256_file)


def _valid(path: Path) -> Path:
    return save_atomic({"format": FORMAT, "version": VERSION, "epoch": 1, "x": torch.ones(3)}, path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = _valid(tmp_path / "epoch_0001.pt")
    assert load_checkpoint(path)["_path"] == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_0001.pt"]

    def crash(*args, **kwargs):  # the process dies while writing: the old file survives
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"format": FORMAT, "version": VERSION, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_0001.pt"]


def test_list_checkpoints_sorted_and_ignores_others(tmp_path):
    for e in (10, 2, 1):
        _valid(tmp_path / f"epoch_{e:04d}.pt")
    (tmp_path / "epoch_0003.pt.abc.tmp").write_bytes(b"partial")
    (tmp_path / "metrics.csv").write_text("epoch\n")
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1, 2, 10]
    with pytest.raises(CheckpointError, match="run folder .* does not exist"):
        list_checkpoints(tmp_path / "nope")


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match=r"epoch_0001.pt is missing; re-run `landscape train`"):
        load_checkpoint(tmp_path / "epoch_0001.pt")


def test_truncated(tmp_path):
    path = _valid(tmp_path / "epoch_0001.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"epoch_0001.pt is truncated.*resumes from the last complete epoch"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["text", "empty", "state_dict", "pickle", "object"])
def test_foreign(tmp_path, kind):
    path = tmp_path / "epoch_0001.pt"
    if kind == "text":
        path.write_text("hello, I am a README\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "state_dict":
        torch.save({"weight": torch.ones(2)}, path)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"format": FORMAT}))
    else:
        torch.save({"format": FORMAT, "version": VERSION, "obj": Path("x")}, path)
    with pytest.raises(CheckpointError, match="not a landscape checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("version,hint", [(VERSION + 1, "upgrade landscape"), (0, "rewrite it"),
                                          (None, "rewrite it")])
def test_incompatible_version(tmp_path, version, hint):
    path = save_atomic({"format": FORMAT, "version": version}, tmp_path / "epoch_0001.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint version {version!r}.*{hint}"):
        load_checkpoint(path)


def test_teacher_hash_is_checked(tmp_path):
    from landscape.checkpoints import TEACHER_FORMAT
    from landscape.models import SmallCNN, model_spec

    spec = model_spec("smallcnn", 1, 10, 4)
    teacher = tmp_path / "teachers" / "t.pt"
    save_atomic({"format": TEACHER_FORMAT, "version": VERSION, "model_spec": spec,
                 "state_dict": SmallCNN(1, 10, 4).state_dict()}, teacher)
    run = tmp_path / "default" / "kd-seed0"
    ckpt = {"_path": str(run / "epoch_0001.pt"),
            "teacher": {"path": os.path.relpath(teacher, run), "sha256": sha256_file(teacher)}}
    assert isinstance(rebuild_teacher(ckpt), SmallCNN)
    ckpt["teacher"]["sha256"] = "0" * 64
    with pytest.raises(CheckpointError, match="the teacher was replaced"):
        rebuild_teacher(ckpt)
    teacher.unlink()
    with pytest.raises(CheckpointError, match="teacher .* is missing"):
        rebuild_teacher(ckpt)


def test_student_weights_that_do_not_fit_are_a_checkpoint_error(tmp_path):
    """A checkpoint whose saved student does not fit the model this code builds names the file."""
    import torch
    from torch import nn

    from landscape.checkpoints import CheckpointError, rebuild_student
    from landscape.models import build_model, model_spec
    from landscape.quant import quantize_model

    spec = model_spec("smallcnn", in_channels=1, num_classes=10, width=4)
    state = quantize_model(build_model(spec), 4, 4).state_dict()
    wrong = dict(state)
    key = next(k for k in wrong if k.endswith("weight"))
    wrong[key] = torch.zeros(1)
    ckpt = {"_path": str(tmp_path / "epoch_0001.pt"), "model_spec": spec,
            "quant": {"w_bits": 4, "a_bits": 4}, "student_state": wrong}
    with pytest.raises(CheckpointError, match="epoch_0001.pt"):
        rebuild_student(ckpt)
    ckpt["student_state"] = state
    assert isinstance(rebuild_student(ckpt), nn.Module)
