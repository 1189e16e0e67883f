"""``make figures``: train or reuse the recipe's runs, analyse every checkpoint, draw, summarise.

    python -m landscape.pipeline [RECIPE] [--data-root DIR] [--device cuda] [--force] [--out DIR]

Four stages, each timed and the times printed at the end:

1. **train**    -- :func:`landscape.zsq.runs.train_recipe` (finished runs are reused as they are);
2. **analyze**  -- :func:`landscape.analyzers.analyze_runs` (cached by checkpoint content and settings);
3. **plot**     -- :func:`landscape.figures.plot_all` (reads only the CSV tables);
4. **findings** -- :func:`landscape.findings.write_readme` (``<out>/README.md``).

Which run plays which role comes from the recipe's ``[figures]`` table (defaults: KD =
``kd``, ZQ = ``gdfq``, KL-only = ``kl``, AIT = ``ait``, PTQ = ``ptq``), and which analysis
runs on which runs follows from the roles unless the recipe's ``[analysis]`` table says
otherwise: cosine, trace, eigen/slice and density on KD and ZQ (the runs trained with both
losses), the inter-epoch cosine on KL-only, AIT and KD, crossings on every trained run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

from landscape.analyzers.settings import ANALYSES, resolve_settings
from landscape.tables import resolve_roles


def role_settings(roles: Mapping) -> dict:
    """Which runs each analysis visits, from the roles (the recipe may override any)."""
    both = [roles["kd"], roles["zq"]]
    trained = [roles["kd"], roles["zq"], roles["kl_only"], roles["ait"]]
    return {
        "cosine": {"runs": both}, "trace": {"runs": both}, "eigen": {"runs": both},
        "density": {"runs": both},
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


@contextmanager
def _stage(name: str, timings: dict, cpu: dict):
    print(f"== {name}", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - t0
        cpu[name] = time.process_time() - c0


def run_figures(recipe="analyses/default.toml", data_root=None, device=None, force: bool = False,
                out="figures") -> None:
    """The whole job: train or reuse the runs, analyse, draw the figures, write ``<out>/README.md``."""
    from landscape.analyzers import analyze_runs
    from landscape.config import load_recipe
    from landscape.figures import plot_all
    from landscape.findings.readme import write_readme
    from landscape.zsq.runs import train_recipe

    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out)
    recipe_path = recipe
    recipe = load_recipe(recipe) if not isinstance(recipe, Mapping) else dict(recipe)
    roles = resolve_roles(recipe.get("figures") or {})
    settings = pipeline_settings(recipe.get("analysis") or {}, roles)
    tables_dir = out / "tables"

    with _stage("train", timings, cpu):
        run_dirs = train_recipe(recipe, data_root=data_root, device=device)
    with _stage("analyze", timings, cpu):
        analyze_runs(run_dirs, analyses=None, force=force, settings=settings, out_dir=tables_dir,
                     device=device)
    with _stage("plot", timings, cpu):
        paths = plot_all(tables_dir, out, roles=roles)
    with _stage("findings", timings, cpu):
        timings_so_far = dict(timings)
        timings_so_far["total"] = time.perf_counter() - start
        readme = write_readme(tables_dir, out, roles=roles, figures=paths, timings=timings_so_far,
                              recipe=str(recipe_path) if not isinstance(recipe_path, Mapping) else recipe.get("name"),
                              settings=resolve_settings(settings))
    timings["total"] = time.perf_counter() - start
    cpu["total"] = time.process_time() - cpu_start

    print(f"\n{len(paths)} figures and {readme} written to {out}/")
    print("time of each stage (wall clock; CPU time of this process, all its threads, beside it):")
    for name, secs in timings.items():
        print(f"  {name:<9} {secs:7.1f} s   (cpu {cpu[name]:7.1f} s)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m landscape.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="?", default="analyses/default.toml")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--force", action="store_true", help="recompute cached analyses")
    p.add_argument("--out", default="figures")
    args = p.parse_args(argv)
    run_figures(args.recipe, data_root=args.data_root, device=args.device, force=args.force, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
