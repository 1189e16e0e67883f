"""A run folder you can trust, through the command line (issue 11 §2 and §4): a sealed checkpoint
with NaN weights is named and skipped (exit 3) while the others are analysed; a read-only --out
is one line naming it; no temporary file outlives an analysis, even a failed one; a locked run
folder makes `landscape train` exit 4 naming the holder's pid (docs/run-folder.md)."""

import errno
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from landscape.analyzers import analyze_runs
from landscape.checkpoints import list_checkpoints, load_checkpoint, save_atomic, seal
from landscape.locking import exclusive_lock
from tiny_runs import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(digits_tiny):
    """The session's digits_tiny root (all five runs and the teacher; read-only: copy it to change it)."""
    return digits_tiny


def _copy(trained, dst: Path) -> Path:
    """A copy of the checkpoint root (teachers/ too, so the relative teacher reference resolves);
    returns the kd run folder."""
    shutil.copytree(trained, dst)
    return dst / "digits_tiny" / "kd-seed0"


def _landscape(*args, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "landscape", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("landscape")]


# ----------------------------------------------------------------------------- §2: NaN weights

def test_a_sealed_checkpoint_with_nan_weights_is_named_and_the_others_analysed(trained, tmp_path):
    kd = _copy(trained, tmp_path / "ck")
    bad = kd / "epoch_0002.pt"
    ckpt = load_checkpoint(bad)
    del ckpt["_path"]
    weight = ckpt["student_state"]["features.0.0.weight"]
    ckpt["student_state"]["features.0.0.weight"] = torch.full_like(weight, float("nan"))
    save_atomic(seal(ckpt), bad)  # the project's own writer: a valid content hash
    assert torch.isnan(load_checkpoint(bad)["student_state"]["features.0.0.weight"]).all()  # passes every check

    p = _landscape("analyze", kd, "--analyses", "cosine", "--out", tmp_path / "t", "--device", "cpu",
                   cwd=tmp_path)
    assert p.returncode == 3, p.stderr  # the documented 'something was skipped' code
    assert "Traceback" not in p.stderr
    listed = [line.strip() for line in p.stderr.splitlines() if line.startswith("  - ")]
    assert listed and all(line.startswith(f"- {bad}: cosine: ") for line in listed), p.stderr
    assert "nan" in listed[0].lower()
    assert "1 checkpoint(s)/analyses skipped" in p.stderr
    table = pd.read_csv(tmp_path / "t" / "cosine.csv")
    assert sorted(table.epoch.unique()) == [1, 3]  # the sound checkpoints are still analysed
    cos = table[table.metric == "cosine"].value
    assert len(cos) == 2 * 8 and cos.notna().all() and (cos.abs() <= 1 + 1e-9).all()  # all + 7 layers


# ----------------------------------------------------------------------------- §4: storage

def _unprivileged():
    """(preexec_fn, uid) to run a child as an ordinary user: chmod binds nobody else; root
    ignores it. None when running as root without a 'nobody' account to become."""
    if os.geteuid() != 0:
        return None, os.geteuid()
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return "skip", None

    def demote():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    return demote, nobody.pw_uid


def _check_one_line(returncode: int, stderr: str, out: Path, reason: str) -> None:
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = _error_lines(stderr)
    assert len(lines) == 1, stderr
    assert re.fullmatch(rf"landscape: StorageError: cannot write {re.escape(str(out))}\S* \({reason}\); "
                        r"the folder is read-only for this user: pass --out to a writable folder.*",
                        lines[0]), lines[0]


def test_a_read_only_out_is_one_line_naming_it(trained):
    """chmod 0o555 for real; as root (which chmod does not bind) the command runs as 'nobody'
    when that user can run this Python, else the test is skipped (the emulated test below runs)."""
    demote, uid = _unprivileged()
    if demote == "skip":
        pytest.skip("running as root (chmod has no effect) and there is no 'nobody' user to become")
    # a world-readable scratch folder, so that the unprivileged child can read the run folder
    scratch = Path(tempfile.mkdtemp(prefix="landscape-ro-"))
    try:
        scratch.chmod(0o755)
        kd = _copy(trained, scratch / "ck")
        for d, _, files in os.walk(scratch):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        out = scratch / "tables"
        out.mkdir()
        out.chmod(0o555)
        try:
            probe = subprocess.run([sys.executable, "-c", "import landscape, torch"], cwd=scratch,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=demote,
                                   capture_output=True)
        except OSError as exc:
            pytest.skip(f"the unprivileged user cannot run {sys.executable} ({exc.strerror})")
        if probe.returncode != 0:
            pytest.skip("the unprivileged user cannot import landscape from this checkout")
        if subprocess.run([sys.executable, "-c", f"open({str(out / 'x')!r}, 'w')"], preexec_fn=demote,
                          capture_output=True).returncode == 0:
            pytest.skip("this user can write into a 0o555 folder; nothing to test")
        p = _landscape("analyze", kd, "--analyses", "cosine", "--out", out, "--device", "cpu",
                       cwd=scratch, preexec_fn=demote, env={"HOME": str(scratch)})
        _check_one_line(p.returncode, p.stderr, out, "Permission denied")
        assert list(out.iterdir()) == []
    finally:
        for d, _, _ in os.walk(scratch):
            os.chmod(d, 0o755)
        shutil.rmtree(scratch)


def test_a_read_only_out_is_one_line_naming_it_emulated(trained, tmp_path, monkeypatch, capsys):
    """The same through `landscape.cli.main` in this process, every write under --out refused
    with EACCES as chmod 0o555 makes the kernel do: runs as root too."""
    from landscape.cli import main

    kd = _copy(trained, tmp_path / "ck")
    out = tmp_path / "tables"
    out.mkdir()
    tries = []

    def refused(path) -> bool:
        if str(Path(path).absolute()).startswith(str(out)):
            tries.append(str(path))
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return False

    real_open, real_os_open, real_mkdir = open, os.open, os.mkdir
    monkeypatch.setattr("builtins.open", lambda f, mode="r", *a, **k: (
        isinstance(f, (str, Path)) and any(c in mode for c in "wax+") and refused(f)) or real_open(f, mode, *a, **k))
    monkeypatch.setattr(os, "open", lambda p, flags, *a, **k: (
        flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and refused(p)) or real_os_open(p, flags, *a, **k))
    monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: refused(p) or real_mkdir(p, *a, **k))
    code = main(["analyze", str(kd), "--analyses", "cosine", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    _check_one_line(code, err, out, "Permission denied")
    assert tries and list(out.iterdir()) == []


def _temporaries(folder: Path) -> list[Path]:
    """Every temporary file a writer may leave: ``x.tmp``, ``x.tmp<pid>``, ``x.<random>.tmp``."""
    return [p for p in folder.rglob("*") if re.search(r"\.tmp(\d*)$", p.name)]


def test_no_temporary_file_outlives_an_analysis_even_a_failed_one(trained, tmp_path, monkeypatch):
    kd = _copy(trained, tmp_path / "ck")
    out = tmp_path / "t"
    real_replace = os.replace
    seen = []

    def disk_full(src, dst, *args, **kwargs):  # every write in out/ fails at its last step
        if str(out) in str(dst):
            seen.append(Path(src))
            assert Path(src).exists()  # the temporary file was written in full
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", disk_full)
        with pytest.raises(OSError, match="No space left on device"):
            analyze_runs([kd], analyses=["cosine", "interepoch"], out_dir=out, device="cpu", progress=False)
    assert seen  # a temporary file was complete and its commit failed
    assert _temporaries(out) == []
    tables = analyze_runs([kd], analyses=["cosine", "interepoch"], out_dir=out, device="cpu", progress=False)
    assert not tables["cosine"].empty and (out / "cosine.csv").is_file()
    assert _temporaries(out) == [] and _temporaries(kd) == []
    assert (out / ".cache" / "cosine").is_dir() and any((out / ".cache" / "cosine").iterdir())


# ----------------------------------------------------------------------------- §3: exit code 4

def test_train_exits_4_naming_the_pid_that_holds_the_run_folder(trained, tmp_path):
    kd = _copy(trained, tmp_path / "ck")
    (kd / "epoch_0003.pt").unlink()  # unfinished: train must write, so it needs the lock
    with exclusive_lock(kd / ".lock", "this test"):
        p = _landscape("train", TINY, "--runs", "kd", "--out", tmp_path / "ck", "--device", "cpu",
                       cwd=tmp_path)
        assert p.returncode == 4, p.stderr
        assert "Traceback" not in p.stderr
        lines = _error_lines(p.stderr)
        assert lines == [f"landscape: LockError: run folder {kd} is in use by process {os.getpid()} "
                         f"(lock {kd / '.lock'}); wait for it to finish or stop it, then retry"], p.stderr
        assert [e for e, _ in list_checkpoints(kd)] == [1, 2]  # nothing was written
    p = _landscape("train", TINY, "--runs", "kd", "--out", tmp_path / "ck", "--device", "cpu", cwd=tmp_path)
    assert p.returncode == 0, p.stderr  # the lock went with its holder
    assert [e for e, _ in list_checkpoints(kd)] == [1, 2, 3]
