"""The same recipe and seed give the same tables whatever OMP_NUM_THREADS says: every process
sets the recipe's torch thread count itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
name = "determinism"
seed = 0
threads = 1
[data]
name = "digits"
[model]
name = "smallcnn"
width = 4
[teacher]
epochs = 1
batch_size = 64
[train]
epochs = 2
warmup_epochs = 0
gi_warmup_epochs = 0
iters_per_epoch = 3
batch_size = 32
gen_width = 8
latent_dim = 16
analysis_batches = 1
analysis_batch_size = 24
[runs.kd]
source = "real"
[runs.gdfq]
source = "synthetic"
[runs.kl]
source = "synthetic"
ce_scale = 0.0
[runs.ait]
source = "synthetic"
ce_scale = 0.0
gi = true
[analysis]
max_batches = 1
[analysis.trace]
max_matvecs = 4
[analysis.eigen]
epochs = "last"
n_points = 3
max_iter = 4
[analysis.density]
n_runs = 1
n_steps = 4
grid_points = 20
"""


def _pipeline(tmp: Path, omp: str) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": omp, "MKL_NUM_THREADS": omp, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "landscape", "figures", str(tmp / "r.toml"), "--jobs", "1",
                           "--checkpoints", str(tmp / f"ck{omp}"), "--out", str(tmp / f"out{omp}")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return tmp / f"out{omp}" / "tables"


def test_tables_do_not_depend_on_omp_num_threads(tmp_path):
    (tmp_path / "r.toml").write_text(RECIPE)
    one, two = _pipeline(tmp_path, "1"), _pipeline(tmp_path, "2")
    names = sorted(p.name for p in one.glob("*.csv"))
    assert names == sorted(p.name for p in two.glob("*.csv")) and "trace.csv" in names
    for name in names:
        a, b = pd.read_csv(one / name), pd.read_csv(two / name)
        if name == "training.csv":  # wall-clock seconds differ, nothing else may
            a, b = a[a["metric"] != "seconds"], b[b["metric"] != "seconds"]
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True,
                                      obj=name)
