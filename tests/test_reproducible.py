"""The same tables on every x86-64 CPU: train and analyse a small recipe through the command line
as an AVX-512, an AVX2-only and a plain SSE4 machine would select their kernels (the variables
the libraries read when they load, set in the user's environment), and compare every table bit
for bit; in the fast mode the same variation must change them (so this test can fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from landscape import kernels

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "analyses" / "digits_tiny.toml"

#: what each kind of machine selects (the user's environment; the CPU here has AVX-512)
MACHINES = {
    "avx512": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
    "sse4": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
             "OPENBLAS_CORETYPE": "Nehalem", "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"},
}

SETTINGS = """
[analysis]
max_batches = 1
[analysis.trace]
max_matvecs = 6
"""

pytestmark = pytest.mark.skipif(not kernels._supported(), reason="the pinned kernels need an x86-64 CPU with AVX2")


def _user_env(machine: str) -> dict:
    """This process's environment as a user's shell would have it (the suite's own pinning and
    the libraries' variables removed), with ``machine``'s selection added."""
    env = {k: v for k, v in os.environ.items() if k not in kernels.PINNED and k != kernels.ENV_MODE}
    return {**env, **MACHINES[machine], "PYTHONPATH": str(ROOT)}


def _tables(tmp: Path, machine: str, *fast: str) -> dict[str, pd.DataFrame]:
    out = tmp / f"{machine}{'-fast' if fast else ''}"
    env = _user_env(machine)
    for cmd in (["train", RECIPE, "--runs", "gdfq", "--epochs", "2", "--out", out / "ck"],
                ["analyze", out / "ck" / "digits_tiny" / "gdfq-seed0", "--analyses", "trace", "cosine",
                 "--settings", tmp / "settings.toml", "--out", out / "t"]):
        done = subprocess.run([sys.executable, "-m", "landscape", *map(str, cmd), *fast], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    tables = {p.name: pd.read_csv(p) for p in sorted((out / "t").glob("*.csv"))}
    metrics = pd.read_csv(out / "ck" / "digits_tiny" / "gdfq-seed0" / "metrics.csv")
    tables["metrics.csv"] = metrics.drop(columns=["seconds"])
    tables["training.csv"] = tables["training.csv"].query("metric != 'seconds'").reset_index(drop=True)
    return tables


def _differ(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys() and {"trace.csv", "cosine.csv", "metrics.csv"} <= a.keys()
    out = []
    for name in a:
        try:
            pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)
        except AssertionError:
            out.append(name)
    return out


def test_every_table_is_bit_identical_whatever_the_machine_selects_and_differs_in_fast_mode(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "settings.toml").write_text(SETTINGS)
    cases = [("avx512",), ("avx2",), ("sse4",), ("avx512", "--fast"), ("sse4", "--fast")]
    with ThreadPoolExecutor(max_workers=3) as pool:  # independent processes of one thread each
        ref, avx2, sse4, fast512, fast_sse4 = pool.map(lambda c: _tables(tmp_path, *c), cases)
    assert _differ(ref, avx2) == [] and _differ(ref, sse4) == []
    fast = _differ(fast512, fast_sse4)
    assert "metrics.csv" in fast and "trace.csv" in fast, fast


def test_the_suite_and_its_subprocesses_run_the_pinned_kernels():
    assert kernels.current() == kernels.REPRODUCIBLE
    env = kernels.pinned_env({**_user_env("sse4")}, kernels.FAST)
    assert env["ATEN_CPU_CAPABILITY"] == "default"  # the fast mode keeps what the user's machine selects
    inherited = kernels.pinned_env(kernels.pinned_env({}, kernels.REPRODUCIBLE), kernels.FAST)
    assert not set(kernels.PINNED) & set(inherited)  # ... and drops what a reproducible parent pinned


def test_the_environment_has_the_locked_versions():
    """``make setup`` installs requirements.lock: every package the numbers depend on is at its
    locked version (a drifted venv is rebuilt by make, since the lock is newer than its stamp)."""
    from importlib.metadata import PackageNotFoundError, version

    locked = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert {"torch", "numpy", "scipy", "pandas", "scikit-learn", "mlxtend", "seaborn", "matplotlib"} <= set(locked)
    wrong = {}
    for name, want in locked.items():
        try:
            have = version(name).split("+")[0]
        except PackageNotFoundError:
            have = None
        if have != want:
            wrong[name] = (have, want)
    assert wrong == {}


def test_a_teacher_not_recorded_in_this_kernel_mode_is_rebuilt_not_reused(tmp_path):
    """A cached teacher of v0.2 (or one made in the other mode under this name) carries no record
    of this mode: it is rebuilt, never reused, so no reproducible run learns from it."""
    from landscape.config import load_recipe
    from landscape.data import load_dataset
    from landscape.zsq.teacher import get_teacher, kernels_record

    recipe = load_recipe(RECIPE)
    d = recipe["data"]
    data = load_dataset(d["name"], None, d["test_fraction"], d["split_seed"])
    path, _ = get_teacher(recipe, data, tmp_path, 0, progress=False)
    assert kernels_record(path).read_text() == kernels.REPRODUCIBLE
    made = path.read_bytes()
    path.write_bytes(made)  # the same weights, but as an old file: no record beside it
    kernels_record(path).unlink()
    with pytest.warns(UserWarning, match="not made in this process's kernel mode"):
        get_teacher(recipe, data, tmp_path, 0, progress=False)
    assert kernels_record(path).read_text() == kernels.REPRODUCIBLE
    assert path.read_bytes() == made  # rebuilt in this mode: the same bytes (seeded)
    kernels_record(path).write_text("machine-dependent")
    with pytest.warns(UserWarning, match="not made in this process's kernel mode"):
        get_teacher(recipe, data, tmp_path, 0, progress=False)
