"""A run folder you can trust (issue 11): every failure tried on a small fixture, each ending
in the correct result or one clear refusal naming the file."""

import builtins
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from landscape.checkpoints import (CheckpointMismatch, list_checkpoints, load_checkpoint,
                                   save_atomic, seal)
from landscape.config import RecipeError
from landscape.errors import LockError, StorageError
from landscape.locking import exclusive_lock
from landscape.zsq import tables

from tiny_runs import recipe, train_tiny  # noqa: F401 - the shared fixture


@pytest.fixture(scope="module")
def trained(digits_tiny):
    """The session's digits_tiny root (all five runs and the teacher; read-only: copy it to change it)."""
    return digits_tiny


def _copy(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "ck")
    return tmp_path / "ck"


def _train(recipe, out, **kwargs):
    return train_tiny(recipe, out, kwargs.pop("runs", ["kl"]), **kwargs)


def _never(*args):
    raise AssertionError("trained although it should not have")


# ----------------------------------------------------------------------------- 1. identity

def test_a_checkpoint_from_elsewhere_is_refused_naming_both_sides(trained, tmp_path):
    out = _copy(trained, tmp_path)
    kd, kl = out / "digits_tiny" / "kd-seed0", out / "digits_tiny" / "kl-seed0"
    shutil.copy(kd / "epoch_0002.pt", kl / "epoch_0002.pt")  # a kd checkpoint in the kl folder
    with pytest.raises(CheckpointMismatch, match=r"kl-seed0/epoch_0002.pt is a checkpoint of run 'kd' "
                                                 r"seed 0, but it sits in the folder of run 'kl'"):
        load_checkpoint(kl / "epoch_0002.pt")
    shutil.copy(kl / "epoch_0003.pt", kl / "epoch_0002.pt")  # epoch 3 copied over epoch 2
    with pytest.raises(CheckpointMismatch, match=r"epoch_0002.pt holds epoch 3 .* file name says epoch 2"):
        load_checkpoint(kl / "epoch_0002.pt")
    other = torch.load(kd / "epoch_0002.pt", weights_only=True)  # a kd of another recipe
    other["recipe"], other["recipe_hash"] = "default", "0" * 64
    save_atomic(seal(other), kd / "epoch_0002.pt")
    with pytest.raises(CheckpointMismatch, match=r"the checkpoint says run 'kd', seed 0, recipe "
                                                 r"'default' \(hash 00000000\).*config.json says run "
                                                 r"'kd', seed 0, recipe 'digits_tiny'"):
        load_checkpoint(kd / "epoch_0002.pt")


def test_resume_refuses_another_runs_state(trained, recipe, tmp_path):
    out = _copy(trained, tmp_path)
    kd, kl = out / "digits_tiny" / "kd-seed0", out / "digits_tiny" / "kl-seed0"
    (kl / "epoch_0003.pt").unlink()
    shutil.copy(kd / "epoch_0002.pt", kl / "epoch_0002.pt")
    with pytest.raises(CheckpointMismatch, match="of run 'kd'"):
        _train(recipe, out, step_hook=_never)
    assert not (kl / "epoch_0003.pt").exists()


# ----------------------------------------------------------------------------- 2. intact files

def test_a_deleted_middle_checkpoint_is_refilled_and_orphans_removed(trained, recipe, tmp_path):
    out = _copy(trained, tmp_path)
    kl, ref = out / "digits_tiny" / "kl-seed0", trained / "digits_tiny" / "kl-seed0"
    (kl / "epoch_0002.pt").unlink()
    orphans = [kl / "epoch_0003.pt.k2j3h4.tmp", kl / "metrics.csv.tmp"]
    for p in orphans:
        p.write_bytes(b"half a write")
    with pytest.warns(UserWarning, match=r"epoch_0002.pt is missing; training resumes after epoch 1"):
        _train(recipe, out)
    assert [e for e, _ in list_checkpoints(kl)] == [1, 2, 3]
    for e in (1, 2, 3):  # refilled, and the later epochs rewritten identically
        assert (kl / f"epoch_000{e}.pt").read_bytes() == (ref / f"epoch_000{e}.pt").read_bytes()
    assert not any(p.exists() for p in orphans)
    assert (kl / "crossings.csv").read_bytes() == (ref / "crossings.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(kl / "metrics.csv").drop(columns="seconds"),
                                  pd.read_csv(ref / "metrics.csv").drop(columns="seconds"))


def test_a_corrupt_last_checkpoint_is_retrained(trained, recipe, tmp_path):
    out = _copy(trained, tmp_path)
    kl, ref = out / "digits_tiny" / "kl-seed0", trained / "digits_tiny" / "kl-seed0"
    data = bytearray((kl / "epoch_0003.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (kl / "epoch_0003.pt").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="epoch_0003.pt"):
        _train(recipe, out)
    assert (kl / "epoch_0003.pt").read_bytes() == (ref / "epoch_0003.pt").read_bytes()


# ----------------------------------------------------------------------------- 3. one writer

def test_a_second_writer_is_refused_naming_the_holder(trained, recipe, tmp_path):
    out = _copy(trained, tmp_path)
    kl = out / "digits_tiny" / "kl-seed0"
    (kl / "epoch_0003.pt").unlink()
    with exclusive_lock(kl / ".lock", "test"):
        with pytest.raises(LockError, match=rf"run folder .*kl-seed0 is in use by process {os.getpid()} "
                                            r"\(lock .*\.lock\); wait for it to finish"):
            _train(recipe, out, step_hook=_never)
        _train(recipe, out, runs=["kd"], step_hook=_never)  # a finished run needs no lock
    _train(recipe, out)  # released with the block
    assert (kl / "epoch_0003.pt").exists()


def test_the_lock_dies_with_its_process(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from landscape.locking import exclusive_lock
        with exclusive_lock({str(lock)!r}, "x"):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=f"in use by process {holder.pid} "):
            with exclusive_lock(lock, "the folder"):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs
        holder.wait()
    with exclusive_lock(lock, "the folder"):
        pass


# ----------------------------------------------------------------------------- 4. OS errors

class ReadOnly:
    """Every write under ``root`` fails with EROFS, as on a read-only mount (root ignores
    chmod, so the file system is emulated); ``tries`` lists the writes attempted."""

    def __init__(self, monkeypatch, root: Path):
        self.root, self.tries = str(root.resolve()), []
        real_open, real_os_open = builtins.open, os.open

        def refuse(path):
            self.tries.append(str(path))
            raise OSError(errno.EROFS, "Read-only file system", str(path))

        def _open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, Path)) and any(c in mode for c in "wax+") and self._mine(file):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def _os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and self._mine(path):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", _open)
        monkeypatch.setattr(os, "open", _os_open)
        for name in ("replace", "unlink", "mkdir", "rename"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, lambda p, *a, _real=real, **k: refuse(p) if self._mine(p)
                                else _real(p, *a, **k))

    def _mine(self, path) -> bool:
        return str(Path(path).resolve()).startswith(self.root)


def test_a_finished_run_in_a_read_only_archive_is_left_alone(trained, recipe, tmp_path, monkeypatch):
    out = _copy(trained, tmp_path)
    ro = ReadOnly(monkeypatch, out)
    _train(recipe, out, runs=["kd", "kl"], step_hook=_never)
    assert ro.tries == []  # config.json is not rewritten, no lock file is needed


def test_read_only_and_full_disks_are_one_line_naming_the_path(trained, recipe, tmp_path, monkeypatch):
    out = _copy(trained, tmp_path)
    (out / "digits_tiny" / "kl-seed0" / "epoch_0003.pt").unlink()
    with monkeypatch.context() as m:
        ReadOnly(m, out)
        with pytest.raises(StorageError, match=r"cannot write .*kl-seed0/\.lock \(Read-only file system\); "
                                               r"the folder is read-only .* pass --out to a writable folder"):
            _train(recipe, out)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    before = (out / "digits_tiny" / "kl-seed0" / "metrics.csv").read_bytes()
    with pytest.raises(StorageError, match=r"cannot write .*kl-seed0/\S+ \(No space left on "
                                           r"device\); the disk is full"):
        _train(recipe, out)
    assert not list((out / "digits_tiny" / "kl-seed0").glob("*.tmp"))
    assert (out / "digits_tiny" / "kl-seed0" / "metrics.csv").read_bytes() == before


# ----------------------------------------------------------------------------- 4. logs

@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(os.urandom(300) + b"\xff\xfe"), r"metrics.csv is not a metrics.csv log \(not UTF-8"),
    (lambda p: p.write_text("epoch,acc\n1,90\n"), r"metrics.csv is not a metrics.csv log: its columns are \['epoch', 'acc'\]"),
    (lambda p: p.write_text(p.read_text() + p.read_text().split("\n", 1)[1]), r"metrics.csv holds epochs out of order or twice \(\[1, 2"),
    (lambda p: p.write_text(p.read_text().replace("train", "trian", 1)), r"metrics.csv line 3: phase = 'trian' is not one of"),
])
def test_junk_metrics_are_refused_on_resume_naming_the_file(trained, recipe, tmp_path, damage, message):
    out = _copy(trained, tmp_path)
    kl = out / "digits_tiny" / "kl-seed0"
    (kl / "epoch_0003.pt").unlink()
    damage(kl / "metrics.csv")
    with pytest.raises(tables.LogError, match=message):
        _train(recipe, out, step_hook=_never)


def test_junk_crossings_are_refused_not_halved(trained, recipe, tmp_path):
    out = _copy(trained, tmp_path)
    kl = out / "digits_tiny" / "kl-seed0"
    lines = (kl / "crossings.csv").read_text().splitlines(keepends=True)
    good = tables.read_crossings(kl / "crossings.csv")
    assert len(good) == len(lines) - 1 and list(good.columns) == tables.CROSSING_COLUMNS
    (kl / "epoch_0003.pt").unlink()
    (kl / "crossings.csv").write_text("".join(lines[:5]) + "garbage,\x01,9\n" + "".join(lines[5:]))
    with pytest.raises(tables.LogError, match=r"crossings.csv line 6: epoch = 'garbage' is not an integer"):
        _train(recipe, out, step_hook=_never)
    (kl / "crossings.csv").write_text("".join(lines) + "".join(lines[1:]))  # two writers
    with pytest.raises(tables.LogError, match="crossings.csv holds steps out of order or twice"):
        _train(recipe, out, step_hook=_never)


# ----------------------------------------------------------------------------- 5. CLI flags

def test_cli_flags_go_through_the_recipe_schema(recipe, tmp_path):
    with pytest.raises(RecipeError, match=r"--seed = -1 is out of range; expected an integer from 0 to 9223372036854775807"):
        _train(recipe, tmp_path, seed=-1)
    with pytest.raises(RecipeError, match=r"--threads = 0 is out of range"):
        _train(recipe, tmp_path, threads=0)
    with pytest.raises(RecipeError, match=r"--epochs = 3.5 is a float; expected an integer"):
        _train(recipe, tmp_path, epochs=3.5)
    assert not (tmp_path / "digits_tiny").exists()
