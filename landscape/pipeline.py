"""``make figures``: train or reuse the recipe's runs over its seeds, analyse every checkpoint,
draw, judge the paper's claims, and write the results file.

    landscape figures [RECIPE] [--seeds 0 1 2] [--jobs N] [--checkpoints DIR] [--out figures]

Five stages, each timed (wall and CPU seconds of all processes) and printed at the end:

1. **train**    -- the teacher of each seed, then every (run, seed) in a pool of ``jobs``
                   processes (:mod:`landscape.workers`); finished runs are reused as they are;
2. **analyze**  -- :func:`landscape.analyzers.analyze_runs` with ``jobs``: the run folders
                   dealt out to the pool, into one cache, then one pass over all of them
                   gathers the tables (:mod:`landscape.analyzers.sharing`, the same
                   function and cost model as ``analyze --nproc``'s ranks);
3. **plot**     -- :func:`landscape.figures.plot_all` (reads only the CSV tables);
4. **findings** -- :func:`landscape.findings.readme.write_readme` (``<out>/README.md``);
5. **results**  -- ``<out>/results.md``: the findings and accuracy tables and the stage times,
                   between markers that ``--publish`` copies into README.md
                   (:mod:`landscape.results`), so that no documented number is typed by hand.

Every process runs with the recipe's ``threads`` torch threads (default 1), so the numbers do
not depend on the machine, ``OMP_NUM_THREADS`` or ``jobs``; ``jobs`` only changes the time.

Which run plays which role comes from the recipe's ``[figures]`` table (defaults: KD = ``kd``,
ZQ = ``gdfq``, KL-only = ``kl``, AIT = ``ait``, PTQ = ``ptq``), and which analysis runs on
which runs follows from the roles unless the recipe's ``[analysis]`` table says otherwise:
cosine, trace, eigen/slices and density on KD and ZQ (the runs trained with both losses; the
Gauss-Newton density beside the Hessian's on ZQ), the inter-epoch cosine on KL-only, AIT and
KD, crossings on every trained run.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from landscape.analyzers.settings import ANALYSES, resolve_settings
from landscape.tables import resolve_roles

if TYPE_CHECKING:
    from landscape.analyzers.runner import AnalysisTables

__all__ = ["role_settings", "pipeline_settings", "run_figures", "recipe_seeds", "teacher_job", "train_job"]


def role_settings(roles: Mapping) -> dict:
    """Which runs each analysis visits, from the roles (the recipe may override any)."""
    both = [roles["kd"], roles["zq"]]
    trained = [roles["kd"], roles["zq"], roles["kl_only"], roles["ait"]]
    return {
        "cosine": {"runs": both}, "trace": {"runs": both}, "eigen": {"runs": both},
        "density": {"runs": both, "curvature": ["hessian", "ggn"]},
        "interepoch": {"runs": [roles["kl_only"], roles["ait"], roles["kd"]]},
        "crossings": {"runs": trained},
    }


def pipeline_settings(analysis: Mapping | None, roles: Mapping) -> dict:
    """The recipe's ``[analysis]`` table over the role-based defaults (validated)."""
    merged = role_settings(roles)
    for key, value in (analysis or {}).items():
        if key in ANALYSES and isinstance(value, Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    resolve_settings(merged, where="[analysis]")  # fail before training, not after
    return merged


def recipe_seeds(recipe: Mapping, seeds: Sequence[int] | None = None) -> list[int]:
    """The seeds to train: ``seeds`` if given, else the recipe's ``seeds``, else its ``seed``."""
    from landscape.config import RecipeError

    chosen = list(seeds) if seeds is not None else list(recipe.get("seeds") or [recipe.get("seed", 0)])
    if not chosen or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in chosen):
        raise RecipeError(f"seeds = {chosen!r}: expected non-negative integers, e.g. --seeds 0 1 2")
    return list(dict.fromkeys(chosen))


class _Clock:
    """Wall and CPU time per stage; CPU time counts this process and its finished workers."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    @contextmanager
    def stage(self, name: str):
        print(f"== {name}", flush=True)
        t0, c0 = time.perf_counter(), self._cpu()
        try:
            yield
        finally:
            self.wall[name] = time.perf_counter() - t0
            self.cpu[name] = self._cpu() - c0


def _provenance(recipe: Mapping, seeds, threads: int, jobs: int, ranks: int = 1) -> dict:
    """What produced the numbers: recipe, seeds, threads and processes, the kernel mode (and
    what it guarantees), the CPU, and the version of every package the numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    from landscape.kernels import describe

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:  # pragma: no cover - every one is a dependency
            return "absent"

    where = {"processes": jobs} if ranks <= 1 else {"torch.distributed ranks": ranks}
    packages = ", ".join(f"{n} {v(n)}" for n in _PACKAGES)
    return {"recipe": recipe.get("name"), "seeds": " ".join(map(str, seeds)), "torch threads per process": threads,
            **where, **describe(), "python": platform.python_version(), "packages": packages}


#: the packages whose versions can move a published number (all locked in requirements.lock)
_PACKAGES = ("torch", "numpy", "scipy", "pandas", "scikit-learn", "mlxtend", "seaborn", "matplotlib")


def _checkpoint_files(root: str) -> set:
    """(path, size, mtime) of every checkpoint and teacher file under the checkpoint root."""
    out = set()
    for p in Path(root).glob("**/*.pt"):
        st = p.stat()
        out.add((str(p), st.st_size, st.st_mtime_ns))
    return out


def _fresh_venv_seconds(start: float) -> float | None:
    """The set-up time ``make setup`` recorded, if the venv was made just before this run."""
    stamp = Path(".venv/.setup-seconds")
    try:
        if time.time() - stamp.stat().st_mtime > (time.perf_counter() - start) + 120:
            return None
        return float(stamp.read_text().strip())
    except (OSError, ValueError):
        return None


def run_figures(recipe="analyses/default.toml", data_root=None, device=None, force: bool = False,
                out="figures", *, seeds: Sequence[int] | None = None, jobs: int | None = None,
                checkpoints: str | Path | None = None, publish: str | Path | None = None) -> "AnalysisTables":
    """The whole job; returns the analysis tables (their ``.problems`` list what was skipped).

    ``seeds``: override the recipe's seeds; ``jobs``: worker processes (default: the usable
    cores); ``checkpoints``: the root the runs are trained into (default ``checkpoints/``);
    ``publish``: also copy the results blocks into this README (see :mod:`landscape.results`).
    """
    from landscape.analyzers import analyze_runs
    from landscape.config import load_recipe
    from landscape.distributed import is_main, world_size
    from landscape.figures import plot_all
    from landscape.findings import claims
    from landscape.findings.readme import write_readme
    from landscape.results import publish_results, write_results
    from landscape.tables import load_tables
    from landscape.workers import default_jobs, run_jobs, set_threads
    from landscape.zsq.runs import DEFAULT_OUT, run_dir_for

    clock = _Clock()
    start, cpu_start = time.perf_counter(), _Clock._cpu()
    out = Path(out)
    recipe_path = recipe
    recipe = load_recipe(recipe) if not isinstance(recipe, Mapping) else dict(recipe)
    roles = resolve_roles(recipe.get("figures") or {})
    settings = pipeline_settings(recipe.get("analysis") or {}, roles)
    seeds = recipe_seeds(recipe, seeds)
    threads = int(recipe.get("threads", 1))
    jobs = int(jobs) if jobs else default_jobs()
    root = str(Path(checkpoints) if checkpoints else DEFAULT_OUT)
    set_threads(threads)
    tables_dir = out / "tables"
    print(f"recipe {recipe['name']}: seeds {seeds}, {len(recipe['runs'])} runs, "
          f"{jobs if world_size() <= 1 else world_size()} process(es) × {threads} torch thread(s)", flush=True)

    before = _checkpoint_files(root)
    with clock.stage("train"):
        run_jobs(teacher_job, [(recipe, s, root, data_root, device) for s in seeds], jobs, threads, "teacher")
        pairs = [(run, s) for s in seeds for run in recipe["runs"]]
        run_jobs(train_job, [(recipe, run, s, root, data_root, device) for run, s in pairs], jobs, threads, "run")
        run_dirs = [run_dir_for(root, recipe["name"], run, s) for run, s in pairs]
    with clock.stage("analyze"):  # one process, the pool of ``jobs``, or the ranks: analyze_runs chooses
        tables = analyze_runs(run_dirs, analyses=None, force=force, settings=settings, out_dir=tables_dir,
                              device=device, threads=threads, jobs=jobs)
    warm = tables.computed == 0 and _checkpoint_files(root) == before
    if not is_main():  # figures --nproc N: every rank trained and analysed; rank 0 draws and writes
        return tables
    with clock.stage("plot"):
        loaded = load_tables(tables_dir)  # read once: the figures, the claims and the results file share them
        paths = plot_all(tables_dir, out, roles=roles, tables=loaded)
    timings = dict(clock.wall)
    with clock.stage("findings"):
        rows = claims(tables_dir, roles, loaded)  # judged once: README.md and results.md print the same rows
        provenance = _provenance(recipe, seeds, threads, jobs, world_size())
        timings["total"] = time.perf_counter() - start
        readme = write_readme(tables_dir, out, roles=roles, figures=paths, timings=timings,
                              recipe=str(recipe_path) if not isinstance(recipe_path, Mapping) else recipe.get("name"),
                              settings=resolve_settings(settings), provenance=provenance, rows=rows)
    # the results file records the stages as measured, so it is written after they all ended
    clock.wall["total"] = time.perf_counter() - start
    clock.cpu["total"] = _Clock._cpu() - cpu_start
    wall = dict(clock.wall)
    venv = _fresh_venv_seconds(start)
    if venv is not None and not warm:
        wall = {"venv (make setup)": venv, **wall, "total": wall["total"] + venv}
    results = write_results(tables_dir, out / "results.md", roles=roles, provenance=provenance,
                            wall=wall, cpu=dict(clock.cpu), warm=warm, rows=rows, tables=loaded)
    if publish:
        publish_results(results, publish)

    print(f"\n{len(paths)} figures, {readme} and {results} written to {out}/"
          f"{' (warm: nothing to train or compute)' if warm else ''}")
    print("time of each stage (wall clock; CPU time of every process, all threads, beside it):")
    for name in clock.wall:  # the stages in order, then the total
        print(f"  {name:<9} {clock.wall[name]:7.1f} s   (cpu {clock.cpu.get(name, float('nan')):7.1f} s)")
    return tables


# ----------------------------------------------------------------------------- the pool's jobs


def teacher_job(recipe: dict, seed: int, out: str, data_root, device) -> str:
    """Train (or find cached) the teacher of one seed; returns its file."""
    from landscape.data import load_dataset
    from landscape.zsq.teacher import get_teacher

    d = recipe["data"]
    data = load_dataset(d["name"], data_root or d["root"] or None, d["test_fraction"], d["split_seed"])
    path, _ = get_teacher(recipe, data, Path(out), seed, device or "cpu", progress=False)
    return str(path)


def train_job(recipe: dict, run: str, seed: int, out: str, data_root, device) -> str:
    """Train (or resume, or reuse) one run of one seed; returns its run folder."""
    from landscape.zsq.runs import train_recipe

    (run_dir,) = train_recipe(recipe, runs=[run], out=out, seed=seed, data_root=data_root, device=device,
                              progress=False)
    return str(run_dir)
