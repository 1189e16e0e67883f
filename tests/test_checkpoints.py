"""Checkpoint files: atomic canonical writes, the content hash, identity checks, and one clear
error for each kind of bad file."""

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from landscape.checkpoints import (FORMAT, VERSION, CheckpointError, CheckpointMismatch,
                                   content_hash, list_checkpoints, load_checkpoint, rebuild_teacher,
                                   save_atomic, seal, sha256_file)
from landscape.models import build_model, model_spec

SPEC = model_spec("smallcnn", 1, 10, 2)


def _ckpt(epoch=1, **extra) -> dict:
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in build_model(SPEC).state_dict().items()}
    return seal({"format": FORMAT, "version": VERSION, "run": "kd", "seed": 0, "epoch": epoch,
                 "model_spec": SPEC, "student_state": state, "x": torch.ones(3), **extra})


def _valid(path: Path) -> Path:
    epoch = int(path.name[6:10]) if path.name.startswith("epoch_") else 1
    return save_atomic(_ckpt(epoch), path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = _valid(tmp_path / "epoch_0001.pt")
    assert load_checkpoint(path)["_path"] == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_0001.pt"]

    def crash(*args, **kwargs):  # the process dies while writing: the old file survives
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(_ckpt(2), path)
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
    saved = SmallCNN(1, 10, 4).state_dict()
    save_atomic(seal({"format": TEACHER_FORMAT, "version": VERSION, "model_spec": spec,
                      "state_dict": saved}), teacher)
    run = tmp_path / "default" / "kd-seed0"
    ckpt = {"_path": str(run / "epoch_0001.pt"),
            "teacher": {"path": os.path.relpath(teacher, run), "sha256": sha256_file(teacher)}}
    rebuilt = rebuild_teacher(ckpt)
    assert isinstance(rebuilt, SmallCNN) and not rebuilt.training
    assert rebuilt.state_dict().keys() == saved.keys()
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in saved.items())  # the saved weights
    ckpt["teacher"]["sha256"] = "0" * 64
    with pytest.raises(CheckpointError, match="the teacher was replaced"):
        rebuild_teacher(ckpt)
    teacher.unlink()
    with pytest.raises(CheckpointError, match="teacher .* is missing"):
        rebuild_teacher(ckpt)


def test_student_weights_that_do_not_fit_are_a_checkpoint_error(tmp_path):
    """A checkpoint whose saved student does not fit the model this code builds names the file."""
    from landscape.checkpoints import CheckpointError, rebuild_student
    from landscape.models import build_model, model_spec
    from landscape.quant import quantize_model

    spec = model_spec("smallcnn", in_channels=1, num_classes=10, width=4)
    state = quantize_model(build_model(spec), 4, 4).state_dict()
    wrong = dict(state)
    key = next(k for k in wrong if k.endswith("weight"))
    wrong[key] = torch.zeros(1)
    # (the quant dict now always carries act_momentum and weight_zero_point)
    ckpt = {"_path": str(tmp_path / "epoch_0001.pt"), "model_spec": spec,
            "quant": {"w_bits": 4, "a_bits": 4, "act_momentum": 0.9, "weight_zero_point": "float"},
            "student_state": wrong}
    with pytest.raises(CheckpointError, match="epoch_0001.pt"):
        rebuild_student(ckpt)
    ckpt["student_state"] = state
    rebuilt = rebuild_student(ckpt).state_dict()
    assert rebuilt.keys() == state.keys() and all(torch.equal(rebuilt[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------- content hash (issue 11 §2)

def test_content_hash_survives_save_and_load_and_ignores_its_own_key(tmp_path):
    ckpt = _ckpt(1, metrics={"test_acc": 91.5, "loss": float("nan")}, batches=[(torch.ones(2, 3), torch.arange(2))])
    loaded = load_checkpoint(save_atomic(ckpt, tmp_path / "epoch_0001.pt"))
    assert loaded["content_hash"] == ckpt["content_hash"] == content_hash(loaded)
    assert len(ckpt["content_hash"]) == 64
    changed = dict(ckpt, x=torch.tensor([1.0, 1.0, 1.0 + 2**-23]))  # one ulp in one value
    assert content_hash(changed) != ckpt["content_hash"]
    assert content_hash({**ckpt, "_path": "elsewhere"}) == ckpt["content_hash"]


def test_equal_content_gives_equal_bytes_whatever_the_sharing(tmp_path):
    """Pickle shares repeated objects; save_atomic writes canonically, so a checkpoint rebuilt
    from loaded data (a resumed run) has the bytes of the original."""
    base = torch.arange(10.0)
    name = "".join(["lay", "er"])
    a = _ckpt(1, batch=base[:4], names=[name, name])             # a view, a shared string
    b = _ckpt(1, batch=base[:4].clone(), names=["layer", "".join(["la", "yer"])])
    pa, pb = save_atomic(a, tmp_path / "a" / "epoch_0001.pt"), save_atomic(b, tmp_path / "b" / "epoch_0001.pt")
    assert pa.read_bytes() == pb.read_bytes()


def _flip_bits_in_first_tensor(path: Path, n_bits: int = 40) -> None:
    """Flip bits inside the stored bytes of a tensor, the zip's CRC left stale (bit rot)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 32)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(fh.read(2), "little"), int.from_bytes(fh.read(2), "little")
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        data = bytearray(fh.read(info.file_size))
        for i in range(n_bits):
            data[(7 * i) % len(data)] ^= 1 << (i % 8)
        fh.seek(start)
        fh.write(data)


def test_flipped_bits_are_refused_naming_the_file(tmp_path):
    path = save_atomic(_ckpt(1), tmp_path / "epoch_0001.pt")
    _flip_bits_in_first_tensor(path)
    with pytest.raises(CheckpointError, match=r"epoch_0001.pt is corrupt: its content hash is .* "
                                              r"the hash stored when it was written"):
        load_checkpoint(path)
    edited = torch.load(save_atomic(_ckpt(1), tmp_path / "b" / "epoch_0001.pt"), weights_only=True)
    edited["x"][0] = 2.0  # edited and re-saved without resealing
    torch.save(edited, tmp_path / "b" / "epoch_0001.pt")
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_checkpoint(tmp_path / "b" / "epoch_0001.pt")


# ----------------------------------------------------------------------------- identity (issue 11 §1)

def test_a_checkpoint_must_sit_under_its_own_epoch_and_run(tmp_path):
    from landscape.checkpoints import check_placement

    run = tmp_path / "gdfq-seed0"
    save_atomic(_ckpt(3), run / "epoch_0002.pt")
    for check in (load_checkpoint, check_placement):  # the placement alone: no tensor is read
        with pytest.raises(CheckpointMismatch, match=r"epoch_0002.pt holds epoch 3 of run 'kd' seed 0, "
                                                     r"but its file name says epoch 2"):
            check(run / "epoch_0002.pt")
    save_atomic(_ckpt(3), tmp_path / "kd-seed0" / "epoch_0003.pt")
    check_placement(tmp_path / "kd-seed0" / "epoch_0003.pt")
    save_atomic(_ckpt(1), run / "epoch_0001.pt")  # a kd checkpoint in the gdfq folder
    with pytest.raises(CheckpointMismatch, match=r"checkpoint of run 'kd' seed 0, but it sits in "
                                                 r"the folder of run 'gdfq' seed 0"):
        load_checkpoint(run / "epoch_0001.pt")


def test_a_model_that_does_not_fit_is_refused_before_anything_is_computed(tmp_path):
    ckpt = _ckpt(1)
    ckpt["student_state"]["fc.weight"] = torch.zeros(10, 3)
    path = save_atomic(seal(ckpt), tmp_path / "epoch_0001.pt")
    with pytest.raises(CheckpointMismatch, match=r"fc.weight has shape \(10, 3\), but the model of "
                                                 r"its spec .* has \(10, 72\)"):
        load_checkpoint(path)
