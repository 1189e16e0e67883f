"""Analyzers: the paper's loss-landscape analyses over checkpoint sweeps, as tidy tables.

    from landscape.analyzers import analyze_runs, analyze_model, ANALYSES

- :func:`analyze_runs` -- every checkpoint of trainer run folders (cached; CSV per analysis).
- :func:`analyze_model` -- any ``nn.Module`` with any losses (your own model and quantizer).

One file per analysis (``cosine``, ``trace``, ``eigen`` (+ 1-D slices), ``density``,
``interepoch``, ``crossings``); each returns tidy rows (:mod:`.tidy`) with the columns

    run, seed, epoch, loss, layer, metric, value, stderr, n_matvecs, converged, residual, probe_seed
    (+ k, x, prev_epoch, slice, curvature, probe)

The runner (:mod:`.runner`) schedules them over checkpoints; :mod:`.cache` keys results by
checkpoint content and settings; :mod:`.discovery` reads run folders; :mod:`.loading` turns a
checkpoint into a point.
"""

from __future__ import annotations

from typing import Callable, Mapping

import pandas as pd
from torch import nn

from landscape.analyzers._common import AnalysisError, Point
from landscape.analyzers.discovery import run_identity
from landscape.analyzers.runner import MODULES, AnalysisTables, AnalysisWarning, Problem, analyze_runs
from landscape.analyzers.settings import ANALYSES, DEFAULTS, check_analyses, resolve_settings
from landscape.analyzers.tidy import COLUMNS, to_table

#: Analyses that need one model (``analyze_model`` runs these); the others compare epochs.
POINT_ANALYSES = ("cosine", "trace", "eigen", "density")

__all__ = [
    "ANALYSES", "POINT_ANALYSES", "COLUMNS", "DEFAULTS", "AnalysisError", "AnalysisWarning", "AnalysisTables",
    "Point", "Problem", "analyze_runs", "analyze_model", "resolve_settings", "run_identity",
]


def analyze_model(model: nn.Module, losses: Mapping[str, Callable], batches, analyses=POINT_ANALYSES,
                  settings: Mapping | None = None, params=None, name: str = "model", epoch=None,
                  seed=None, groups=None, qkv: bool = False) -> dict[str, pd.DataFrame]:
    """Run the single-model analyses on any model and losses (no checkpoint, no cache).

    model:    any ``nn.Module`` (e.g. a student quantized by your own rule, with an STE).
    losses:   ``{name: loss_fn}``, ``loss_fn(model, batch) -> scalar`` mean over the batch,
              e.g. ``{"ce": landscape.losses.cross_entropy(),
              "kl": landscape.losses.kl_to_teacher(teacher, 4.0)}``.
    batches:  a list of batches (or a DataLoader), on the model's device: ``(x, y)`` tuples, or
              dicts such as ``{"input_ids": ...}`` with a loss that reads them
              (``landscape.losses.causal_lm()``).
    analyses: any of ``cosine``, ``trace``, ``eigen``, ``density``.
    settings: the ``[analysis]`` table (same keys as for :func:`analyze_runs`; ``runs``,
              ``epochs`` and ``max_batches`` do not apply: every given batch is used).
              The loss names analysed are those of ``losses`` unless ``settings["losses"]``.
    params:   parameter names to analyse (default: every parameter with ``requires_grad``).
    name, epoch, seed: the ``run``, ``epoch`` and ``seed`` columns of the rows (NaN when not
              given), so that a loop over your own checkpoints builds a sweep that
              :func:`landscape.figures.plot_all` can draw once written as CSV.
    groups:   a parameter grouping (a regex such as ``r"blocks\.(\d+)\.(attn|mlp)"`` or a list of
              module prefixes, see :meth:`CurvatureOperator.groups
              <landscape.curvature.base.CurvatureOperator.groups>`): the trace, eigen and density
              analyses add rows per group (``layer`` = the group's name), from the same cached
              graph; ``qkv=True`` adds the q, k and v parts of packed attention projections.

    Returns ``{analysis: DataFrame}`` with the same tidy columns as :func:`analyze_runs`.
    """
    names = check_analyses(analyses)
    pairwise = [n for n in names if n not in POINT_ANALYSES]
    if pairwise:
        raise AnalysisError(f"{', '.join(pairwise)} compare(s) consecutive checkpoints and cannot run on "
                            f"one model; analyze_model runs {', '.join(POINT_ANALYSES)} "
                            "(use analyze_runs on a run folder for the others)")
    if not isinstance(model, nn.Module):
        raise AnalysisError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(losses, Mapping) or not losses:
        raise AnalysisError("losses must be a non-empty dict {name: loss_fn}, e.g. {'ce': cross_entropy()}")
    for k, fn in losses.items():
        if not callable(fn):
            raise AnalysisError(f"losses[{k!r}] is not callable: a loss_fn(model, batch) -> scalar is expected")
    settings = dict(settings or {})
    settings.setdefault("losses", list(losses))
    cfg = resolve_settings(settings)
    unknown = [l for l in cfg["losses"] if l not in losses]
    if unknown:
        raise AnalysisError(f"settings losses {unknown} are not among the given losses {list(losses)}")
    if "cosine" in names and len(cfg["losses"]) < 2:
        raise AnalysisError("the cosine analysis compares two losses' gradients: give at least two losses")
    batches = list(batches)
    if not batches:
        raise AnalysisError("no batches given: the losses are evaluated on a list of batches")
    if groups is not None:
        from landscape.curvature.groups import group_names

        try:
            group_names(params if params is not None else [n for n, p in model.named_parameters() if p.requires_grad],
                        groups)
        except ValueError as exc:
            raise AnalysisError(f"analyze_model(groups=...): {exc}") from None
    meta = {"run": name}
    if epoch is not None:
        meta["epoch"] = int(epoch)
    if seed is not None:
        meta["seed"] = int(seed)
    point = Point(model, dict(losses), batches, meta=meta, params=params, groups=groups, qkv=bool(qkv))
    return {n: to_table(MODULES[n].analyze(point, cfg)) for n in names}
