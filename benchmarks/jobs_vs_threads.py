"""Pick the pipeline's parallelism by measurement: 2 processes × 1 thread, or 1 process × 2 threads?

Runs the one-seed pipeline (`landscape figures --seeds 0`) twice from nothing, each in its own
checkpoint and output folders: once as the default recipe says (``threads = 1``) with 2 worker
processes, once with ``threads = 2`` and 1 worker process. Every stage's wall time comes from
the results file each run writes; the table goes to ``benchmarks/jobs_vs_threads.md``.
The two configurations do not give the same numbers (a thread count changes float summation
order), which is why the recipe fixes one; only the times are compared here.

    .venv/bin/python benchmarks/jobs_vs_threads.py          # about 10 minutes on 2 idle cores
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "analyze", "plot", "findings")


def _stage_times(printed: str) -> dict[str, float]:
    """``{stage: wall seconds}`` from the stage-time lines the pipeline prints last
    (``  train      121.5 s   (cpu ...)``)."""
    table = printed.split("time of each stage", 1)[-1]
    return {name: float(wall) for name, wall in re.findall(r"^\s+(\w[\w ()]*?)\s+([0-9.]+) s\s", table, re.M)}


def _run(label: str, threads: int, jobs: int, work: Path) -> dict[str, float]:
    recipe = work / f"{label}.toml"
    text = (ROOT / "analyses" / "default.toml").read_text(encoding="utf-8")
    recipe.write_text(re.sub(r"^threads = \d+", f"threads = {threads}", text, count=1, flags=re.M), encoding="utf-8")
    out = work / label
    cmd = [sys.executable, "-m", "landscape", "figures", str(recipe), "--seeds", "0", "--jobs", str(jobs),
           "--checkpoints", str(out / "checkpoints"), "--out", str(out / "figures")]
    print(f"== {label}: {' '.join(cmd[1:])}", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True)
    times = _stage_times(done.stdout)
    times["wall, whole command"] = time.perf_counter() - t0
    return times


def main() -> None:
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="jobs_vs_threads_") as tmp:
        work = Path(tmp)
        runs = {"2 processes × 1 thread": _run("procs", threads=1, jobs=2, work=work),
                "1 process × 2 threads": _run("threads", threads=2, jobs=1, work=work)}
    names = [s for s in (*STAGES, "total", "wall, whole command") if all(s in t for t in runs.values())]
    a, b = runs.values()
    lines = ["| stage (s) | " + " | ".join(runs) + " | ratio |", "|---|---|---|---|"]
    lines += [f"| {s} | {a[s]:.1f} | {b[s]:.1f} | {a[s] / b[s]:.2f} |" if b[s] > 0 else f"| {s} | {a[s]:.1f} | {b[s]:.1f} | — |"
              for s in names]
    winner = min(runs, key=lambda k: runs[k]["wall, whole command"])
    text = ("# 2 processes × 1 thread vs 1 process × 2 threads (`make figures SEEDS=0`)\n\n"
            "Written by `benchmarks/jobs_vs_threads.py`; ratio = first ÷ second (< 1: processes faster).\n\n"
            + "\n".join(lines) + f"\n\nFaster here: **{winner}** (load average {load0:.2f} at the start, "
            f"{os.getloadavg()[0]:.2f} at the end; {os.cpu_count()} cores).\n")
    path = Path(__file__).with_name("jobs_vs_threads.md")
    path.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
