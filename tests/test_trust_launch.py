"""`--nproc` no larger than the machine, and no worker outliving its launcher (issue 19 §7):
`--nproc` above the usable cores (or the memory for that many workers) is refused before any
process starts unless `--oversubscribe`; the launcher starts torchrun, and each worker sets
itself up, to receive SIGTERM when its parent dies, so a `kill -9` of the launcher leaves nothing."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from landscape import cli, distributed, launch_guard
from landscape.launch_guard import ResourceError, check_nproc, die_with_parent, usable_cores

ROOT = Path(__file__).resolve().parents[1]


def test_nproc_above_the_cores_is_refused_before_anything_starts(monkeypatch, capsys, tmp_path):
    started = []
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: started.append(a) or 0)
    n = usable_cores() + 1
    code = cli.main(["train", "analyses/digits_tiny.toml", "--nproc", str(n), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and started == []
    assert f"--nproc {n} starts more processes than the {usable_cores()} usable core(s)" in err
    assert "--oversubscribe" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["train", "analyses/digits_tiny.toml", "--nproc", str(n), "--oversubscribe"]) == 0
    assert started and started[0][1] == n


def test_nproc_above_the_memory_is_refused(monkeypatch):
    monkeypatch.setattr(launch_guard, "usable_cores", lambda: 64)
    monkeypatch.setattr(launch_guard, "available_memory", lambda: 3 << 30)  # a 3 GiB cgroup
    with pytest.raises(ResourceError, match=r"--nproc 8 needs about 4.0 GiB .* 3.0 GiB are available; use "
                                            r"--nproc 6 or fewer"):
        check_nproc(8)
    check_nproc(6)
    check_nproc(100, oversubscribe=True)


def test_the_launcher_starts_torchrun_to_die_with_it(monkeypatch):
    seen = {}

    class Fake:
        def __init__(self, cmd, **kw):
            seen.update(kw, cmd=cmd)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(distributed.subprocess, "Popen", Fake)
    distributed.launch(["report", "x"], 2)
    assert "torch.distributed.run" in seen["cmd"] and seen["preexec_fn"] is die_with_parent


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_killed_parent():
    """A launcher killed with SIGKILL: its child (started with die_with_parent) ends too."""
    code = ("import subprocess, sys, time\n"
            "from landscape.launch_guard import die_with_parent\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=die_with_parent)\n"
            "print(c.pid, flush=True)\n"
            "time.sleep(120)\n")
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(launcher.stdout.readline())
    assert _alive(child)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the child outlived its launcher"
