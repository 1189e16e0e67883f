"""``landscape compare RECIPE``: every quantizer of the recipe's ``[compare]`` table at every bit
width over its seeds; the tables, the figures, the findings, and the results blocks.

    run_compare("analyses/compare.toml", out="figures/compare", publish="README.md")

Stages, each timed (wall and CPU seconds of all processes):

1. **teachers** -- the recipe's teacher of each seed, trained once and cached under the
   checkpoint root exactly as ``landscape train`` caches it (shared with ``make figures``);
2. **measure**  -- one job per (seed, quantizer) (:func:`landscape.compare.study.study_seed`) in
   a pool of ``jobs`` processes, each with the recipe's ``threads`` torch threads;
3. **plot**     -- the four figures (:mod:`landscape.compare.plots`), from the tables only;
4. **findings** -- the two claims (:mod:`landscape.compare.claims`), ``<out>/README.md`` and
   ``<out>/results.md`` with the blocks ``compare:findings`` and ``compare:timings`` (a language
   model's: ``compare:<name>:findings`` / ``:timings``, its outputs under ``figures/compare/<name>``), which
   ``publish`` copies into a README (:func:`landscape.results.publish_results`), so no number
   in the README is typed by hand.

Tables (``<out>/tables/``): ``curvature.csv``, ``sensitivity.csv``, ``allocation.csv``,
``spearman.csv``, ``allocation_claims.csv``; every one has ``quantizer`` and ``bits`` (or
``budget``) columns.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from landscape.compare.claims import RULES, allocation_rows, claim_rows, findings_table, spearman_rows
from landscape.compare.plots import CAPTIONS, plot_compare
from landscape.compare.settings import compare_settings
from landscape.compare.lm_study import study_lm_seed
from landscape.compare.study import study_seed
from landscape.lm_teacher import get_lm_teacher, is_lm_recipe

__all__ = ["run_compare", "TABLES"]

TABLES = ("curvature", "sensitivity", "allocation")


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:  # pragma: no cover - not available
        return "unknown"


def _study_job(recipe: dict, settings: dict, seed: int, quantizer: str, root: str, data_root, device) -> dict:
    if is_lm_recipe(recipe):  # a language model: per-block damage, validation loss instead of accuracy
        return study_lm_seed(recipe, settings, seed, root, device or "cpu", [quantizer])
    return study_seed(recipe, settings, seed, root, data_root, device or "cpu", quantizers=[quantizer])


def _teacher_job(recipe: dict, seed: int, root: str, data_root, device) -> str:
    """The cached teacher of one seed: the image teacher of ``landscape train``, or a language model's."""
    from landscape.pipeline import teacher_job

    if not is_lm_recipe(recipe):
        return teacher_job(recipe, seed, root, data_root, device)
    from landscape.data import load_dataset

    d = recipe["data"]
    path, _ = get_lm_teacher(recipe, load_dataset(d["name"], None, d["test_fraction"], d["split_seed"]), root, seed,
                             device or "cpu")
    return str(path)


def block_prefix(recipe: Mapping) -> str:
    """The results blocks' prefix: ``compare`` (images, ``make compare``), ``compare:<name>`` for a
    language-model recipe (``compare:tinylm:findings``), so neither overwrites the other's."""
    if not is_lm_recipe(dict(recipe)):
        return "compare"
    name = str(recipe["name"]).lower()
    return f"compare:{name}" if re.fullmatch(r"[a-z-]+", name) else "compare:lm"


def default_out(recipe: Mapping) -> Path:
    """``figures/compare`` for images; ``figures/compare/<recipe name>`` for a language model."""
    return Path("figures/compare") / (str(recipe["name"]) if is_lm_recipe(dict(recipe)) else "")


def _results_text(findings: str, timings: str, provenance: str, prefix: str = "compare", title: str = "make compare") -> str:
    return "\n".join([f"# Results of `{title}`", "",
                      "Written by `landscape compare`; `--publish README.md` copies these blocks into the README.", "",
                      f"## {prefix}:findings", "", f"<!-- results:{prefix}:findings -->", findings, provenance,
                      f"<!-- /results:{prefix}:findings -->", "",
                      f"## {prefix}:timings", "", f"<!-- results:{prefix}:timings -->", timings,
                      f"<!-- /results:{prefix}:timings -->", ""])


def _readme(out: Path, paths: list[Path], findings: str, settings: dict, provenance: str, timings: str,
            lm: bool = False) -> Path:
    lines = ["# `landscape compare`: quantizers × bit widths × layers", "",
             f"Quantizers {', '.join(settings['quantizers'])}; bits {settings['bits']}; activations "
             f"{settings['a_bits'] if settings['a_bits'] is not None else 'float'} bits; mode {settings['mode']}; "
             f"seeds {settings['seeds']}. {provenance}", ""]
    if lm:
        lines += ["A language model: every \"layer\" below is a **block** (the attention or the MLP of a transformer "
                  "block, or the head; `[compare] blocks`), every loss is the next-token cross-entropy on fixed "
                  "validation windows (nats per token), and where the captions and rules say test accuracy, read "
                  "**validation loss**: lower is better, and claim 2's Δ is the guided allocation's loss reduction.", ""]
    for p in paths:
        lines += [f"## {p.stem}", "", f"![{p.stem}]({p.name})", "", CAPTIONS.get(p.stem, ""),
                  f"Data: [{p.stem}.csv]({p.stem}.csv).", ""]
    lines += ["## Findings", "", findings, "", "Rules:", ""] + [f"- {r}" for r in RULES]
    lines += ["", "## Timings", "", timings, ""]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_compare(recipe: str | Path | Mapping = "analyses/compare.toml", out: str | Path | None = None, *,
                checkpoints: str | Path | None = None, seeds: Sequence[int] | None = None, jobs: int | None = None,
                publish: str | Path | None = None, data_root: str | None = None,
                device: str | None = None) -> dict[str, pd.DataFrame]:
    """The whole job (see the module docstring); returns the tables. ``seeds`` overrides the
    recipe's; ``jobs`` (default: the usable cores) changes the time, never
    the numbers; ``checkpoints``: the root of the teacher cache (default ``checkpoints/``)."""
    import torch

    from landscape import kernels
    from landscape.config import load_recipe
    from landscape.pipeline import _Clock, recipe_seeds
    from landscape.results import _timings, publish_results
    from landscape.workers import default_jobs, run_jobs, set_threads
    from landscape.zsq.runs import DEFAULT_OUT

    clock = _Clock()
    start, cpu0, load0 = time.perf_counter(), _Clock._cpu(), _load()
    recipe = load_recipe(recipe) if not isinstance(recipe, Mapping) else dict(recipe)
    settings = compare_settings(recipe)
    if seeds is not None:
        settings["seeds"] = recipe_seeds(recipe, seeds)
    threads = int(recipe.get("threads", 1))
    jobs = int(jobs) if jobs else min(default_jobs(), len(settings["seeds"]) * len(settings["quantizers"]))
    root = str(Path(checkpoints) if checkpoints else DEFAULT_OUT)
    out = Path(out) if out else default_out(recipe)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    print(f"compare {recipe['name']}: {len(settings['quantizers'])} quantizers × {len(settings['bits'])} bit widths "
          f"× {len(settings['seeds'])} seeds, {settings['mode']}; {jobs} process(es) × {threads} torch thread(s)",
          flush=True)
    with clock.stage("teachers"):
        run_jobs(_teacher_job, [(recipe, s, root, data_root, device) for s in settings["seeds"]], jobs, threads,
                 "teacher")
    with clock.stage("measure"):
        work = [(recipe, settings, s, q, root, data_root, device) for s in settings["seeds"] for q in settings["quantizers"]]
        done = run_jobs(_study_job, work, jobs, threads, "(seed, quantizer)")
    tables = {name: pd.concat([t[name] for t in done], ignore_index=True) for name in TABLES}
    for name, t in tables.items():
        t.to_csv(out / "tables" / f"{name}.csv", index=False)
    with clock.stage("plot"):
        spearman = pd.DataFrame([r for loss in ("ce", "kl") if loss in set(tables["sensitivity"]["loss"])
                                 for r in spearman_rows(tables["sensitivity"], loss)])
        alloc = pd.DataFrame(allocation_rows(tables["allocation"]))
        spearman.to_csv(out / "tables" / "spearman.csv", index=False)
        alloc.to_csv(out / "tables" / "allocation_claims.csv", index=False)
        paths = plot_compare(tables, spearman, out)
    with clock.stage("findings"):
        rows = claim_rows(spearman[spearman["loss"] == "ce"].to_dict("records"), alloc.to_dict("records"))
        findings = findings_table(rows)
    clock.wall["total"] = time.perf_counter() - start
    clock.cpu["total"] = _Clock._cpu() - cpu0
    provenance = (f"Recipe {recipe.get('path', recipe['name'])}; seeds {' '.join(map(str, settings['seeds']))}; "
                  f"{jobs} process(es) × {threads} torch thread(s); "
                  + "; ".join(f"{k} {v}" for k, v in kernels.describe().items()) + f"; torch {torch.__version__}; "
                  f"python {platform.python_version()}; {os.cpu_count()} cores, load average {load0} at the start "
                  f"and {_load()} at the end (the machine's, all users).")
    timings = _timings(clock.wall, clock.cpu)
    prefix = block_prefix(recipe)
    _readme(out, paths, findings, settings, provenance, timings, lm=prefix != "compare")
    results = out / "results.md"
    title = "make compare" if prefix == "compare" else f"landscape compare {recipe.get('path', recipe['name'])}"
    results.write_text(_results_text(findings, timings, "\n" + provenance + "\n", prefix, title), encoding="utf-8")
    if publish:
        publish_results(results, publish)
    print(f"\n{len(paths)} figures, {out / 'README.md'} and {results} written")
    print(findings)
    for name in clock.wall:
        print(f"  {name:<9} {clock.wall[name]:7.1f} s   (cpu {clock.cpu.get(name, float('nan')):7.1f} s)")
    return tables
