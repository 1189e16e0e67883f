"""The price of reproducible kernels: one process of the default recipe in each kernel mode.

    python benchmarks/kernels_cost.py --worker MODE OUT   # one measurement, prints RESULT {json}

``run.py`` (section i) launches the worker alternately in the reproducible and the fast mode
(:mod:`landscape.kernels`; the mode must be in the environment before torch loads, hence a fresh
process each), on the default recipe's ``gdfq`` run with one torch thread as the pipeline uses:

* one training epoch: the ``seconds`` of the third epoch in metrics.csv (the first student
  epoch after the two generator-only ones; its teacher was trained beforehand and is not timed);
* one Hessian-vector product: CE on the checkpoint's analysis batches, median of 20 products on
  the cached graph;
* the analysis of one checkpoint: ``analyze_runs`` of that epoch with the recipe's settings
  (cosine, trace, eigen and slices, density) from an empty cache.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "analyses" / "default.toml"


def worker(mode: str, out: Path) -> dict:
    from landscape import kernels

    kernels.apply(mode)  # before torch loads (this worker imports nothing else first)
    import pandas as pd
    import torch

    from landscape.analyzers import analyze_runs
    from landscape.checkpoints import analysis_batches, load_checkpoint, rebuild_student
    from landscape.config import load_recipe
    from landscape.curvature import Hessian
    from landscape.losses import cross_entropy
    from landscape.pipeline import pipeline_settings
    from landscape.tables import resolve_roles
    from landscape.zsq.runs import train_recipe

    torch.set_num_threads(1)
    (run,) = train_recipe(str(RECIPE), runs=["gdfq"], epochs=3, out=out, seed=0, progress=False)
    epoch_s = float(pd.read_csv(run / "metrics.csv")["seconds"].iloc[2])

    ckpt = load_checkpoint(run / "epoch_0003.pt")
    model = rebuild_student(ckpt, device="cpu").eval()  # as the analyses rebuild it
    batches = list(analysis_batches(ckpt, "cpu"))
    H = Hessian(model, cross_entropy(), batches)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0), dtype=next(model.parameters()).dtype)
    H @ v
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        H @ v
        times.append(time.perf_counter() - t0)
    recipe = load_recipe(str(RECIPE))
    roles = resolve_roles(recipe.get("figures") or {})
    settings = pipeline_settings(recipe.get("analysis") or {}, roles)
    for name in settings:
        if isinstance(settings[name], dict) and "runs" in settings[name]:
            settings[name] = {**settings[name], "epochs": [3]}
    t0 = time.perf_counter()
    analyze_runs([run], analyses=["cosine", "trace", "eigen", "density"], settings=settings, out_dir=out / "t",
                 device="cpu", progress=False)
    return {"mode": kernels.current(), "epoch_s": epoch_s, "hvp_s": statistics.median(times),
            "analysis_s": time.perf_counter() - t0}


def measure(rounds: int = 1) -> dict:
    """``{"reproducible": [...], "fast": [...]}``: worker results, the modes alternating."""
    out: dict[str, list[dict]] = {"reproducible": [], "fast": []}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANDSCAPE_")}
    for i in range(rounds):
        for mode in (("reproducible", "fast") if i % 2 == 0 else ("fast", "reproducible")):
            scratch = ROOT / "benchmarks" / f".kernels-{mode}"
            shutil.rmtree(scratch, ignore_errors=True)
            done = subprocess.run([sys.executable, __file__, "--worker", mode, str(scratch)], env=env, cwd=ROOT,
                                  capture_output=True, text=True)
            shutil.rmtree(scratch, ignore_errors=True)
            found = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not found:
                raise RuntimeError(f"kernel-cost worker ({mode}) failed: {done.stderr[-2000:]}")
            out[mode].append(json.loads(found[0][7:]))
    return out


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        print("RESULT " + json.dumps(worker(sys.argv[2], Path(sys.argv[3]))), flush=True)
    else:
        print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1), indent=1))
