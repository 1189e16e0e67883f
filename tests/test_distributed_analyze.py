"""The analysis of a sweep on 2 real gloo processes writes the tables of one process: dealing the
run folders out (each checkpoint analysed once, on one rank, into the shared cache; rank 0
gathers) gives the same bytes, and so does analysing every checkpoint data-parallel (each rank a
block of its analysis batches, every product all-reduced). ``landscape analyze --nproc 2`` keeps
the exit codes and prints each line once."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from distributed_helpers import run_ranks
from landscape.analyzers import ANALYSES, analyze_runs
from landscape.analyzers.distributed import analyze_distributed, share_out
from landscape.analyzers.settings import resolve_settings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "max_batches": 2,
    "trace": {"max_matvecs": 10, "rtol": None},
    "eigen": {"epochs": "last", "n_points": 3, "max_iter": 10},
    "density": {"n_runs": 1, "n_steps": 6, "grid_points": 20},
}


@pytest.fixture(scope="module")
def runs(digits_tiny, tmp_path_factory):
    """The session's digits_tiny kd and ait runs (read-only) and their tables from one process."""
    root = tmp_path_factory.mktemp("sweep")
    torch.set_num_threads(1)
    dirs = [digits_tiny / "digits_tiny" / f"{name}-seed0" for name in ("kd", "ait")]
    serial = analyze_runs(dirs, settings=SETTINGS, out_dir=root / "serial", device="cpu", progress=False)
    return root, dirs, serial


def _sweep(rank, world, dirs, root):
    a = analyze_runs(dirs, settings=SETTINGS, out_dir=root / "by_checkpoints", device="cpu", progress=False)
    b = analyze_distributed(dirs, settings=SETTINGS, out_dir=root / "by_data", device="cpu", progress=False,
                            mode="data")
    torch.save({"computed": (a.computed, b.computed), "problems": (len(a.problems), len(b.problems)),
                "tables": (sorted(a), sorted(b))}, root / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def shared(runs):
    root, dirs, _ = runs
    run_ranks(_sweep, 2, dirs, root)
    return [torch.load(root / f"rank{r}.pt") for r in range(2)]


def test_both_modes_write_the_tables_of_one_process(runs, shared):
    root, _, serial = runs
    names = [*ANALYSES, "training"]
    for name in names:
        ref = (root / "serial" / f"{name}.csv").read_bytes()
        assert (root / "by_checkpoints" / f"{name}.csv").read_bytes() == ref, name
        a = pd.read_csv(root / "serial" / f"{name}.csv")
        b = pd.read_csv(root / "by_data" / f"{name}.csv")
        pd.testing.assert_frame_equal(a, b, rtol=1e-6, check_exact=False)  # all-reduced: rounding only
    assert len(pd.read_csv(root / "serial" / "density.csv")) > 0


def test_every_checkpoint_is_computed_once_and_every_rank_agrees(runs, shared):
    _, _, serial = runs
    r0, r1 = shared
    assert r0["computed"] == r1["computed"] == (serial.computed, serial.computed)
    assert r0["problems"] == r1["problems"] == (0, 0)
    assert r0["tables"][0] == sorted(serial) and r1["tables"][0] == []  # rank 0 holds the tables


def test_make_figures_pool_fills_the_cache_through_the_same_sharing_and_writes_one_process_tables(runs):
    """``analyze_runs(..., jobs=2)``: two spawned processes fill the cache (analyzers.sharing, the
    function the ranks use), this process gathers: the bytes of one process, each result computed
    once (a gathering pass that recomputed would count every result twice)."""
    root, dirs, _ = runs
    pooled = analyze_runs(dirs, analyses=["cosine"], settings=SETTINGS, out_dir=root / "pool", device="cpu",
                          progress=False, jobs=2, threads=1)
    assert pooled.computed == 2 * 3 and pooled.problems == []  # 2 runs × 3 checkpoints, one result each
    for name in ("cosine", "training"):
        assert (root / "pool" / f"{name}.csv").read_bytes() == (root / "serial" / f"{name}.csv").read_bytes(), name


def test_run_folders_are_dealt_out_largest_first(runs):
    _, dirs, _ = runs  # kd, ait: three checkpoints each
    kd, ait = dirs
    equal = resolve_settings(SETTINGS)
    assert share_out([kd, ait, kd], equal, list(ANALYSES), 2) == [[kd, kd], [ait]]  # ties: in order
    heavy_ait = resolve_settings({**SETTINGS, "density": {"runs": ["ait"]}, "eigen": {"runs": ["ait"]}})
    assert share_out([kd, kd, ait], heavy_ait, list(ANALYSES), 2) == [[ait], [kd, kd]]
    assert share_out([kd, ait], equal, list(ANALYSES), 3) == [[kd], [ait], []]


def test_cli_analyze_nproc_keeps_exit_codes_and_prints_once(runs, tmp_path):
    root, dirs, _ = runs
    bad = tmp_path / "kd-seed0"
    shutil.copytree(dirs[0], bad)
    (bad / "epoch_0002.pt").write_bytes(b"not a checkpoint")
    settings = tmp_path / "s.toml"
    settings.write_text('max_batches = 2\nlosses = ["ce"]\n[trace]\nmax_matvecs = 4\nrtol = 0.5\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "landscape", "analyze", str(bad), str(dirs[1]), "--analyses", "trace", "cosine",
           "--settings", str(settings), "--out", str(tmp_path / "t"), "--nproc", "2"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    # the warning and the summary line, as in one process: rank 0 alone reports it
    assert done.stderr.count("epoch_0002.pt: load: CheckpointError") == 2, done.stderr
    assert "rank 1" not in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.count("trace: ") == 1
    done = subprocess.run(cmd + ["--keep-going"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(tmp_path / "t" / "trace.csv")) > 0
