"""Data-parallel training on 2 real gloo processes (digits_tiny): DDP on N ranks of B samples
is the step of one process on the global batch of N·B; checkpoints are written by rank 0, state
the effective batch, and resume on every rank (a run killed mid-epoch continues to byte-identical
checkpoints); ``landscape train --nproc 2`` relaunches itself through torchrun and survives a
kill of all its processes."""

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from distributed_helpers import run_ranks
from landscape.checkpoints import list_checkpoints, load_checkpoint
from landscape.zsq.runs import train_recipe
from tiny_runs import TINY, recipe  # noqa: F401 - the shared fixture

ROOT = Path(__file__).resolve().parents[1]


def _train(rank, world, recipe, out, runs, kills, long=None):
    """Train ``runs``; raise KeyboardInterrupt on every rank at each (run, epoch, step) of
    ``kills`` once, and restart (as a user would after Ctrl-C), until done. With ``long``, also
    ait for 12 epochs into that folder (the command-line test's reference)."""
    kills = set(kills)

    def hook(run, epoch, step):
        if (run, epoch, step) in kills:
            kills.discard((run, epoch, step))
            raise KeyboardInterrupt

    for _ in range(len(kills) + 1):
        try:
            train_recipe(recipe, runs=runs, out=out, device="cpu", progress=False, step_hook=hook)
            break
        except KeyboardInterrupt:
            continue
    assert not kills
    if long is not None:
        shutil.copytree(Path(out) / "teachers", Path(long) / "teachers", dirs_exist_ok=True)
        train_recipe(recipe, runs=["ait"], epochs=12, out=long, device="cpu", progress=False)


def _same_run_folders(a: Path, b: Path, runs):
    for name in runs:
        da, db = a / "digits_tiny" / f"{name}-seed0", b / "digits_tiny" / f"{name}-seed0"
        ca, cb = list_checkpoints(da), list_checkpoints(db)
        assert [e for e, _ in ca] == [e for e, _ in cb] == [1, 2, 3]
        for (e, pa), (_, pb) in zip(ca, cb):
            assert pa.read_bytes() == pb.read_bytes(), (name, e)  # byte-identical
        assert (da / "crossings.csv").read_bytes() == (db / "crossings.csv").read_bytes()
        pd.testing.assert_frame_equal(pd.read_csv(da / "metrics.csv").drop(columns="seconds"),
                                      pd.read_csv(db / "metrics.csv").drop(columns="seconds"))


@pytest.fixture(scope="module")
def ddp(recipe, tmp_path_factory):
    """kd/gdfq/ait on 2 ranks, uninterrupted (``whole``) and killed twice mid-epoch (``resumed``)."""
    root = tmp_path_factory.mktemp("ddp")
    run_ranks(_train, 2, recipe, root / "whole", ["kd", "gdfq", "ait"], [], root / "long")
    shutil.copytree(root / "whole" / "teachers", root / "resumed" / "teachers")
    run_ranks(_train, 2, recipe, root / "resumed", ["gdfq", "ait"], [("gdfq", 2, 2), ("ait", 3, 1)])
    return root


def test_ddp_run_folders_state_the_effective_batch(ddp):
    import json

    for name in ("kd", "gdfq", "ait"):
        d = ddp / "whole" / "digits_tiny" / f"{name}-seed0"
        config = json.loads((d / "config.json").read_text())
        assert config["distributed"] == {"world_size": 2, "batch_per_rank": 32, "effective_batch": 64}
        ckpt = load_checkpoint(d / "epoch_0003.pt")
        assert ckpt["distributed"] == config["distributed"]
        assert ckpt["epoch_grad"]["n_steps"] == 4 and len(pd.read_csv(d / "metrics.csv")) == 3
        assert not list(d.glob("*.tmp"))
    # the PTQ run (no training) is not data-parallel: the folder is the single-process one
    assert not (ddp / "whole" / "digits_tiny" / "ptq-seed0").exists()


def test_killed_ddp_run_resumes_to_identical_checkpoints(ddp):
    _same_run_folders(ddp / "whole", ddp / "resumed", ["gdfq", "ait"])
    kappas = pd.read_csv(ddp / "whole" / "digits_tiny" / "ait-seed0" / "crossings.csv").kappa
    assert (kappas > 1).any()  # GI searched on the reduced gradient, identically on both ranks


def test_ddp_equals_one_process_on_the_global_batch(ddp, recipe, tmp_path):
    """kd on 2 ranks × 32 samples against one process × 64 (the same global batches of the
    shared sampler): the same activation ranges, accuracy and (to float32 rounding of the
    gradient average) the same weights and epoch-mean gradients."""
    one = copy.deepcopy(recipe)
    one["runs"]["kd"]["batch_size"] = 64
    shutil.copytree(ddp / "whole" / "teachers", tmp_path / "teachers")
    torch.set_num_threads(1)
    (serial,) = train_recipe(one, runs=["kd"], out=tmp_path, device="cpu", progress=False)
    parallel = ddp / "whole" / "digits_tiny" / "kd-seed0"
    for e in (1, 2, 3):
        a, b = load_checkpoint(serial / f"epoch_{e:04d}.pt"), load_checkpoint(parallel / f"epoch_{e:04d}.pt")
        for k, v in a["student_state"].items():
            torch.testing.assert_close(b["student_state"][k], v, rtol=1e-4, atol=1e-6, msg=k)
        assert b["metrics"]["test_acc"] == pytest.approx(a["metrics"]["test_acc"], abs=0.3)
        assert b["metrics"]["loss_total"] == pytest.approx(a["metrics"]["loss_total"], rel=1e-5)
        if e > 1:
            torch.testing.assert_close(b["epoch_grad"]["mean"], a["epoch_grad"]["mean"], rtol=1e-3, atol=1e-6)
        for (xa, ya), (xb, yb) in zip(a["analysis_batches"], b["analysis_batches"]):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)  # rank 0's block opens the global batch
    acts = [k for k in a["student_state"] if k.endswith((".lo", ".hi"))]
    assert acts and all(torch.equal(a["student_state"][k], b["student_state"][k]) for k in acts)


# ----------------------------------------------------------------------------- the command line


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (read from /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return out


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "landscape", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_nproc_survives_a_kill_of_every_process(ddp, tmp_path):
    args = ["train", str(TINY), "--runs", "ait", "--epochs", "12", "--nproc", "2", "--threads", "1"]
    shutil.copytree(ddp / "whole" / "teachers", tmp_path / "b" / "teachers")
    run_b = tmp_path / "b" / "digits_tiny" / "ait-seed0"
    killed = _cli(args + ["--out", str(tmp_path / "b")])
    deadline = time.monotonic() + 240
    while not (run_b / "epoch_0002.pt").exists():
        assert time.monotonic() < deadline and killed.poll() is None, killed.communicate()
        time.sleep(0.02)
    for pid in reversed(_tree(killed.pid)):  # the machine goes down: every process, workers first
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed.communicate()
    done = [e for e, _ in list_checkpoints(run_b)]
    assert 2 <= max(done) < 12, done  # killed in the middle of the run
    again = _cli(args + ["--out", str(tmp_path / "b")])
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert out.split() == [str(run_b)]  # printed once, by rank 0
    run_a = ddp / "long" / "digits_tiny" / "ait-seed0"  # the same run, uninterrupted (2 spawned ranks)
    for (e, pa), (_, pb) in zip(list_checkpoints(run_a), list_checkpoints(run_b), strict=True):
        assert pa.read_bytes() == pb.read_bytes(), e
    assert (run_a / "crossings.csv").read_bytes() == (run_b / "crossings.csv").read_bytes()
    # a folder trained on 2 ranks is not resumed by one process (another effective batch)
    one = _cli(["train", str(TINY), "--runs", "ait", "--epochs", "13", "--out", str(tmp_path / "b")])
    _, err = one.communicate(timeout=120)
    assert one.returncode == 2 and "different configuration (distributed: " in err, err


def test_cli_figures_nproc_trains_analyses_and_draws_once(ddp, tmp_path):
    """The whole pipeline on 2 ranks: the runs the fixture trained on 2 ranks are reused, the
    others trained data-parallel (PTQ by rank 0), the sweep shared out, rank 0 draws."""
    import json

    shutil.copytree(ddp / "whole", tmp_path / "ck")
    done = _cli(["figures", str(TINY), "--nproc", "2", "--checkpoints", str(tmp_path / "ck"), "--out",
                 str(tmp_path / "fig")])
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err
    assert out.count("== train") == 1 and out.count("== plot") == 1, out  # rank 0 alone prints
    assert list((tmp_path / "fig").glob("*.png")) and (tmp_path / "fig" / "README.md").is_file()
    kl = json.loads((tmp_path / "ck" / "digits_tiny" / "kl-seed0" / "config.json").read_text())
    assert kl["distributed"]["world_size"] == 2
    assert "distributed" not in json.loads((tmp_path / "ck" / "digits_tiny" / "ptq-seed0" / "config.json").read_text())
    runs = set(pd.read_csv(tmp_path / "fig" / "tables" / "training.csv").run)
    assert runs == {"ptq", "kd", "gdfq", "kl", "ait"}
