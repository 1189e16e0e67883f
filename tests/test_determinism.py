"""The same recipe and seed give the same numbers whatever thread count the caller or the shell
left behind: every process sets the recipe's torch thread count itself.

What this pins (the thread count changes the last bits of a conv or matmul, and training
amplifies them: on digits_tiny, 1 and 2 threads give different weights after one epoch and
different trace / eigen tables):

- in-process, on the numbers a process produces: ``train_recipe`` (one ait run, its generator
  warm-up epoch and a KL+GI epoch) and ``analyze_runs`` (trace and eigenpairs of both
  checkpoints) called with torch left at 1 and at 3 threads give bit-identical weights
  (student and generator), logs, GI crossings and tables; the thread count is restored after
  training. These are the calls the ``figures`` pipeline's workers make (``workers.train_job``,
  ``analyze_runs(threads=recipe's threads)``).
- across processes: ``landscape analyze`` under ``OMP_NUM_THREADS=MKL_NUM_THREADS=1`` and ``=2``
  writes the same trace table bit for bit (the command line does not take its thread count from
  the environment).

(It replaced running the whole ``figures`` pipeline twice in subprocesses; the pipeline's own
plumbing is pinned in test_pipeline.py, its provenance line "torch threads per process 1"
included.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from landscape.analyzers import analyze_runs
from landscape.checkpoints import list_checkpoints, load_checkpoint
from landscape.config import load_recipe
from tiny_runs import TINY, train_tiny

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"max_batches": 1, "trace": {"max_matvecs": 4, "rtol": None},
            "eigen": {"epochs": "all", "n_points": 3, "max_iter": 4}}


def _train_and_analyse(teachers: Path, out: Path, ambient: int):
    """One ait run (2 epochs) and its trace/eigen tables, with torch left at ``ambient`` threads."""
    saved = torch.get_num_threads()
    shutil.copytree(teachers, out / "teachers")  # the session's teacher: same file, same hash
    torch.set_num_threads(ambient)
    try:
        recipe = load_recipe(TINY)
        assert recipe.get("threads", 1) == 1 and ambient != 1
        (run,) = train_tiny(recipe, out, ["ait"], epochs=2)
        assert torch.get_num_threads() == ambient  # restored after the call
        tables = analyze_runs([run], ["trace", "eigen"], settings=SETTINGS, out_dir=out / "t", device="cpu",
                              progress=False, threads=1)
    finally:
        torch.set_num_threads(saved)
    return run, tables


def test_a_training_run_and_an_analysis_do_not_depend_on_the_callers_thread_count(digits_tiny, tmp_path):
    a, ta = _train_and_analyse(digits_tiny / "teachers", tmp_path / "a", ambient=3)
    b, tb = _train_and_analyse(digits_tiny / "teachers", tmp_path / "b", ambient=2)
    ca, cb = list_checkpoints(a), list_checkpoints(b)
    assert [e for e, _ in ca] == [e for e, _ in cb] == [1, 2]
    for (e, pa), (_, pb) in zip(ca, cb):
        ka, kb = load_checkpoint(pa), load_checkpoint(pb)
        for part in ("student_state", "generator_state"):
            assert ka[part].keys() == kb[part].keys() and ka[part], (e, part)
            for k in ka[part]:
                assert torch.equal(ka[part][k], kb[part][k]), (e, part, k)
    assert (a / "crossings.csv").read_bytes() == (b / "crossings.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv").drop(columns="seconds"),
                                  pd.read_csv(b / "metrics.csv").drop(columns="seconds"), check_exact=True)
    assert {"trace", "eigen"} <= ta.keys() == tb.keys()
    for name in ("trace", "eigen"):
        assert len(ta[name]) > 0
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)


def test_the_command_line_does_not_take_its_thread_count_from_the_environment(digits_tiny, tmp_path):
    kd = digits_tiny / "digits_tiny" / "kd-seed0"  # read-only: analyze writes under --out only
    (tmp_path / "s.toml").write_text('max_batches = 1\nlosses = ["ce"]\n[trace]\nmax_matvecs = 4\nrtol = 0.5\n')

    def analyse(omp: str) -> pd.DataFrame:
        env = {**os.environ, "OMP_NUM_THREADS": omp, "MKL_NUM_THREADS": omp, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "landscape", "analyze", str(kd), "--analyses", "trace",
                               "--settings", str(tmp_path / "s.toml"), "--out", str(tmp_path / f"t{omp}")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return pd.read_csv(tmp_path / f"t{omp}" / "trace.csv")

    with ThreadPoolExecutor(max_workers=2) as pool:  # two independent processes
        one, two = pool.map(analyse, ["1", "2"])
    assert len(one) > 0 and set(one["epoch"]) == {1, 2, 3}
    pd.testing.assert_frame_equal(one, two, check_exact=True)
